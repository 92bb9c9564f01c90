"""The MUNIT training-iteration case of ``fastmbr bench`` (speed is measured in bench/, never asserted here)."""

import json

import pytest
import torch

from fastmbr.cli import main


def test_bench_munit_train_case_writes_reference_fast_and_variant_rows(tmp_path, monkeypatch):
    from fastmbr.bench import munit_train

    small = {"dim": 4, "mlp_dim": 8, "dis_dim": 4, "dis_layers": 2, "dis_scales": 2}  # seconds, not minutes
    monkeypatch.setitem(munit_train.PRESETS, "tiny", {"batch": 2, "image_size": 16, "arch_overrides": small})
    main(["bench", "--quick", "--device", "cpu", "--only", "munit train tiny", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*-quick-only-munit-train-tiny.json")
    payload = json.loads(path.read_text())
    assert payload["complete"] is True
    main_row, *variant_rows = payload["results"]
    assert main_row["case"].startswith("MUNIT train step tiny (batch 2, 16px): fastmbr vs NVlabs-style")
    assert {"reference s/iter", "fastmbr s/iter", "fastmbr speed-up"} <= set(main_row)
    assert all(main_row[k] > 0 for k in ("reference s/iter", "fastmbr s/iter", "fastmbr speed-up"))
    names = {r["case"].split(": ", 1)[1] for r in variant_rows}
    assert names == {"channels-last", "bf16 autocast (bf16 vs fp32)"}  # compiled only under --compile
    for r in variant_rows:
        assert {"s/iter", "speed-up vs reference", "speed-up vs fastmbr", "first-step loss rel. error"} <= set(r)
    cl = next(r for r in variant_rows if "channels-last" in r["case"])
    assert cl["first-step loss rel. error"] < 1e-4  # same precision: the same losses


def test_reference_generator_update_computes_fastmbrs_losses():
    """The NVlabs-style arm (plain AdaIN, upsample then convolve) computes the same losses from the same weights
    and styles as fastmbr's step: only the work differs."""
    from fastmbr.bench.munit_reference import ReferenceMunit
    from fastmbr.bench.munit_train import trainer_for

    trainer = trainer_for("tiny", torch.device("cpu"))
    ref = ReferenceMunit(trainer)
    xa, xb = torch.rand(2, 2, 3, 32, 32).unbind(0)
    ours, _, _ = trainer.generator_losses(xa, xb, torch.Generator().manual_seed(3))
    theirs = ref.gen_update(xa, xb, torch.Generator().manual_seed(3))
    for k, v in ours.items():
        assert float(theirs[k]) == pytest.approx(float(v), rel=1e-4), k
