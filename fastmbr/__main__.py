from fastmbr.cli import main

main()
