"""The bench suite runs and records what it measured (no timing is asserted: speed lives in bench/)."""

import json

from fastmbr.cli import main


def test_bench_writes_a_result_file_with_device_commit_and_ratios(tmp_path):
    main(["bench", "--quick", "--device", "cpu", "--size", "tiny", "--batch-size", "4",
          "--only", "expand k=3", "--only", "decode chunk", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*.json")
    payload = json.loads(path.read_text())
    assert payload["device_type"] == "cpu" and payload["device"] and payload["commit"]
    assert payload["command"].startswith("fastmbr")
    cases = {r["case"]: r for r in payload["results"]}
    expand = cases["G.expand k=3"]
    assert {"reference images/s", "loop images/s", "expand images/s", "expand speed-up"} <= set(expand)
    assert all(v > 0 for k, v in expand.items() if k != "case")
    assert cases["decode chunk k=10"]["best"].startswith("chunk=")
