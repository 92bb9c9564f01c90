"""The benchmark suite (fastmbr bench)."""
