"""The bench suite runs and records what it measured (no timing is asserted: speed lives in bench/)."""

import json

import torch

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
    assert all(v > 0 for k, v in expand.items() if k not in ("case", "precision"))
    assert expand["precision"] == "fp32/fp32"
    assert cases["decode chunk k=10"]["best"].startswith("chunk=")
    assert payload["complete"] is True


def test_a_bench_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    """Cases are written as they finish, so a time limit (a lent GPU's budget) loses only the case it cut."""
    import pytest

    from fastmbr.bench import report

    def interrupted(setup):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "bench_classifier_step", interrupted)
    with pytest.raises(SystemExit, match="130"):  # the CLI's exit status for an interrupt
        main(["bench", "--quick", "--device", "cpu", "--size", "tiny", "--batch-size", "4",
              "--only", "expand k=3", "--only", "classifier step", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*.json")
    payload = json.loads(path.read_text())
    assert payload["complete"] is False and [r["case"] for r in payload["results"]] == ["G.expand k=3"]


def test_bench_full_steps_compare_fp32_with_fp32_and_amp_with_amp(tmp_path):
    main(["bench", "--quick", "--device", "cpu", "--size", "tiny", "--batch-size", "4",
          "--only", "mda-3", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*-only-mda-3.json")
    payload = json.loads(path.read_text())
    fp32, amp = payload["results"]
    assert (fp32["precision"], amp["precision"]) == ("fp32/fp32", "amp/amp") and "amp/amp" in amp["case"]
    for case in (fp32, amp):
        assert case["fastmbr speed-up"] > 0
        # encode once, no style encoder: fastmbr's step does fewer FLOPs than the reference's
        assert 0 < case["fastmbr GFLOP/call"] < case["reference GFLOP/call"]
        assert case["fastmbr TFLOP/s"] > 0 and "fastmbr fraction of bf16 peak" not in case  # no peak for a CPU
    assert list(payload["headline"]) == ["amp/amp", "fp32/fp32"]  # amp/amp is the headline
    assert payload["headline"]["amp/amp"] == {amp["case"]: amp["fastmbr speed-up"]}


def test_the_reference_runs_at_the_precision_it_is_given_and_concatenates_mda():
    from fastmbr.bench.reference import reference_half, reference_mda_loss
    from fastmbr.bench.stages import BenchSetup, make_generator

    setup = BenchSetup(device=torch.device("cpu"), size="tiny", image_size=16, batch=3)
    gen, _ = make_generator(setup)
    half = reference_half(gen, setup.device)
    assert next(half.parameters()).dtype == torch.bfloat16 and next(gen.parameters()).dtype == torch.float32
    calls = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x, y = torch.rand(3, 3, 16, 16), torch.randint(0, 5, (3,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reference_mda_loss(model, half, x, y, k=3)
    assert calls == [12] and loss.dtype == torch.float32  # one forward over the k + 1 copies


def test_a_failing_case_is_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    from fastmbr.bench import report

    def broken(setup, k):
        raise RuntimeError("out of memory on purpose\nsecond line")

    monkeypatch.setattr(report, "bench_expand", broken)
    main(["bench", "--quick", "--device", "cpu", "--size", "tiny", "--batch-size", "4",
          "--only", "expand k=3", "--only", "decode chunk", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*.json")
    payload = json.loads(path.read_text())
    assert payload["results"][0] == {"case": "expand k=3", "error": "out of memory on purpose"}
    assert payload["results"][1]["case"] == "decode chunk k=10" and payload["complete"] is True


def test_kernel_cases_time_worst_of_k_at_batch_256_and_1000_classes(monkeypatch):
    from fastmbr.bench import kernels, report
    from fastmbr.bench.stages import BenchSetup

    seen = []
    monkeypatch.setattr(kernels, "bench_worst_of_k", lambda device, k, batch, classes, repeats: seen.append(
        (k, batch, classes)) or {"speedup": 1.0})
    monkeypatch.setattr(kernels, "bench_pga", lambda device, batch, repeats: {"speedup": 1.0})
    rows = report.kernel_cases(BenchSetup(device=torch.device("cpu"), batch=32), quick=True)
    assert seen == [(10, 32, 1000), (10, 256, 1000)] and len(rows) == 3


def test_flop_counter_matches_the_formula_for_a_convolution():
    from fastmbr.bench.flops import flops_of

    x, w = torch.rand(2, 3, 8, 8), torch.rand(4, 3, 3, 3)
    assert flops_of(lambda: torch.nn.functional.conv2d(x, w)) == 2 * 2 * 4 * 6 * 6 * 3 * 3 * 3


def test_loader_cases_time_every_file_backend_over_a_written_jpeg_tree(tmp_path, monkeypatch):
    """Each file backend reads the same JPEG tree (or says which package it lacks); ERM fed by each one is set
    beside the same step on resident data."""
    from fastmbr.bench import loading, report
    from fastmbr.pipelines.loaders.dali import dali_available
    from fastmbr.pipelines.loaders.ffcv import ffcv_available

    monkeypatch.setattr(report, "tree_images", lambda setup, quick: 24)
    monkeypatch.setattr(loading, "TIMED_EPOCHS", 1)
    main(["bench", "--quick", "--device", "cpu", "--batch-size", "8", "--only", "loaders", "--only", "erm fed",
          "--out", str(tmp_path)])
    (path,) = tmp_path.glob("*.json")
    cases = {r["case"].split(" (")[0]: r for r in json.loads(path.read_text())["results"]}
    available = {"torch": True, "nvjpeg": True, "dali": dali_available(), "ffcv": ffcv_available()}
    for backend, here in available.items():
        alone, fed = cases[f"loader {backend}"], cases[f"ERM fed by {backend}"]
        if not here:
            assert backend in alone["error"] and backend in fed["error"]
            continue
        assert "error" not in alone and "error" not in fed, (alone, fed)
        assert alone["images/s"] > 0 and alone["images"] == 24 and "JPEG 71×54 → 32px" in alone["case"]
        assert fed["fed images/s"] > 0 and fed["fed / resident"] == fed["fed images/s"] / fed["resident images/s"]
    capped = cases["loader ffcv max-res 37"]  # 256 px for 224 px crops, scaled to 32 px
    if available["ffcv"]:
        assert capped["images/s"] > 0 and capped["images"] == 24, capped
    else:
        assert "ffcv" in capped["error"]
    assert cases["loader tensor"]["images/s"] > 0


def test_the_jpeg_tree_holds_decodable_photo_sized_files_in_class_folders(tmp_path):
    from PIL import Image

    from fastmbr.bench.loading import CLASSES, tree_shape, write_jpeg_tree

    files = write_jpeg_tree(tmp_path, 12, 224, workers=2)
    assert tree_shape(224) == (500, 375) and len(files) == 12
    assert files.labels.tolist() == [i % CLASSES for i in range(12)]
    for path, label in zip(files.paths, files.labels.tolist()):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == (500, 375) and path.parent.name == f"c{label}"
            darkest, brightest = image.convert("L").getextrema()
            assert brightest - darkest > 10  # textured, not flat
