"""The bench suite's driver: runs the stages, prints a rich table, writes bench/results/<device>-<date>.json."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import torch

from fastmbr.bench.stages import (BenchSetup, bench_classifier_step, bench_expand, bench_full_step, bench_loader,
                                  engine_step, erm_batch, tune_decode_chunk)
from fastmbr.engine.rundir import git_sha
from fastmbr.fileio import atomic_write


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import nvidia.dali as dali

        out["dali"] = dali.__version__
    except ImportError:
        out["dali"] = None
    return out


def suite(setup: BenchSetup, quick: bool) -> list[tuple[str, callable]]:
    """The cases in the order they run: the kernels first (seconds, nothing to compile), so that a run cut short
    by a lent GPU's time limit still has them. Each full step runs at fp32/fp32 and at amp/amp."""
    ks = (3, 10) if quick else (1, 3, 10, 20)
    cases = [("kernels", lambda: kernel_cases(setup, quick))]
    cases += [(f"expand k={k}", lambda k=k: bench_expand(setup, k)) for k in ks]
    cases.append(("decode chunk", lambda: tune_decode_chunk(setup, 10)))
    cases.append(("classifier step", lambda: bench_classifier_step(setup)))
    algos = [("mda", 3), ("mrt", 10)] if quick else [("mda", 3), ("mda", 10), ("mrt", 10), ("mrt", 20)]
    cases += [(f"{a}-{k} {'amp' if amp else 'fp32'}", lambda a=a, k=k, amp=amp: bench_full_step(setup, a, k, amp))
              for a, k in algos for amp in (False, True)]
    cases.append(("loaders", lambda: loader_cases(setup, quick)))
    cases.append(("erm fed", lambda: erm_fed_cases(setup, quick)))
    from fastmbr.bench.munit_train import munit_train_cases
    return cases + munit_train_cases(setup, quick)


def tree_images(setup: BenchSetup, quick: bool) -> int:
    """JPEGs in the loaders' tree: enough for a few timed batches on a CPU, 16 batches of 256 on a GPU."""
    return 320 if quick or setup.device.type != "cuda" else 4096


def loader_workers(setup: BenchSetup) -> int:
    return min(8, os.cpu_count() or 1) if setup.device.type == "cuda" else 2


def loader_cases(setup: BenchSetup, quick: bool) -> list[dict]:
    """In-memory MNIST through the tensor and torch loaders, then a JPEG tree through every file backend, and
    through FFCV once more from a ``.beton`` capped at a resolution near the crops'."""
    from fastmbr.bench.loading import FILE_BACKENDS, bench_file_loader, capped_resolution, jpeg_tree
    from fastmbr.pipelines.datasets import load_domains

    data = load_domains("mnist").train
    out = [reported(f"loader {backend}", lambda b=backend: bench_loader(b, data, setup))
           for backend in ("tensor", "torch")]
    batch, workers, cap = erm_batch(setup), loader_workers(setup), capped_resolution(setup.image_size)
    with jpeg_tree(tree_images(setup, quick), setup.image_size, workers) as files:
        out += [reported(f"loader {backend} (JPEG tree)", lambda b=backend: bench_file_loader(
            files, b, batch, setup.image_size, setup.device, workers)) for backend in FILE_BACKENDS]
        out.append(reported(f"loader ffcv max-res {cap} (JPEG tree)", lambda: bench_file_loader(
            files, "ffcv", batch, setup.image_size, setup.device, workers, max_resolution=cap)))
    return out


def erm_fed_cases(setup: BenchSetup, quick: bool) -> list[dict]:
    """ERM's engine step fed by each file backend from the JPEG tree, against the same step on resident data."""
    from fastmbr.bench.loading import FILE_BACKENDS, bench_erm_fed_by, jpeg_tree

    batch, workers = erm_batch(setup), loader_workers(setup)
    label = f"{setup.arch}, {setup.image_size}px, batch {batch}" + (", bf16" if setup.amp else "") + \
        (", compiled" if setup.compile else "")
    step = engine_step(setup)  # one model for every backend: compiled once, its shapes never change
    with jpeg_tree(tree_images(setup, quick), setup.image_size, workers) as files:
        return [reported(f"ERM fed by {backend}", lambda b=backend: bench_erm_fed_by(
            files, b, step, batch, setup.image_size, setup.device, workers, label)) for backend in FILE_BACKENDS]


def reported(case: str, run) -> dict:
    """``run()``, or the one-line reason it failed: a backend that cannot run here is reported, not fatal."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001
        return {"case": case, "error": (str(exc).splitlines() or [type(exc).__name__])[0]}


def kernel_cases(setup: BenchSetup, quick: bool) -> list[dict]:
    from fastmbr.bench.kernels import bench_pga, bench_worst_of_k

    repeats = 10 if quick else 50
    out = [reported(f"kernel worst_of_k (k=10, B={b}, C=1000)", lambda b=b: {
        "case": f"kernel worst_of_k (k=10, B={b}, C=1000)",
        **bench_worst_of_k(setup.device, k=10, batch=b, classes=1000, repeats=repeats)})
        for b in sorted({setup.batch, 256})]  # B = 256: where the kernel, not the launch, decides
    return out + [reported("kernel pga_step_", lambda: {"case": "kernel pga_step_",
                                                        **bench_pga(setup.device, batch=setup.batch, repeats=repeats)})]


def run_bench(device: str, quick: bool, compile: bool, out_dir: Path, only: list[str] | None, console,
              size: str | None = None, image_size: int | None = None, batch: int | None = None,
              arch: str | None = None, amp: bool = False) -> Path:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    on_gpu = dev.type == "cuda"
    setup = BenchSetup(
        device=dev, size=size or ("base" if on_gpu and not quick else "reference-tiny"),
        image_size=image_size or (224 if on_gpu and not quick else 32), batch=batch or (32 if on_gpu else 32),
        arch=arch or ("resnet50" if on_gpu and not quick else "cnn"),
        repeats=1 if quick else 5, rounds=3, compile=compile, amp=amp,
    )
    payload = {
        "device": device_name(dev), "device_type": dev.type, "date": dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_sha(), "command": " ".join(["fastmbr", *sys.argv[1:]]) if sys.argv else "fastmbr bench",
        "versions": versions(), "setup": {k: str(v) for k, v in vars(setup).items()}, "results": [],
        "complete": False,
    }
    path = result_path(out_dir, payload["device"], quick, compile, amp, only)
    for name, case in suite(setup, quick):
        if only and not any(o in name for o in only):
            continue
        console.print(f"[dim]bench: {name}…[/dim]")
        produced = reported(name, case)  # a case that fails is an error row; the run goes on
        payload["results"] += produced if isinstance(produced, list) else [produced]
        payload["headline"] = headline(payload["results"])
        write_payload(path, payload)  # after every case: a run cut short by a time limit keeps what it measured
    payload["complete"] = True
    write_payload(path, payload)
    print_table(payload["results"], console, payload["device"])
    console.print(f"written: {path}")
    return path


def headline(results: list[dict]) -> dict:
    """The speed-ups over the reference at the same precision, amp/amp first (the headline: the reference code
    shipped with ``--half-prec``), then fp32/fp32."""
    out = {}
    for precision in ("amp/amp", "fp32/fp32"):
        rows = {r["case"]: r["fastmbr speed-up"] for r in results
                if r.get("precision") == precision and "fastmbr speed-up" in r}
        if rows:
            out[precision] = rows
    return out


def result_path(out_dir: Path, device: str, quick: bool, compile: bool, amp: bool, only: list[str] | None) -> Path:
    """``bench/results/<device>-<date>[-quick][-compile][-amp][-only-…].json``."""
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")[:40]
    mode = ("-quick" if quick else "") + ("-compile" if compile else "") + ("-amp" if amp else "") + \
        ("-only-" + "".join(c if c.isalnum() else "-" for c in "-".join(only)) if only else "")
    return out_dir / f"{slug}-{dt.date.today().isoformat()}{mode}.json"


def write_payload(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write((json.dumps(payload, indent=2, default=str) + "\n").encode()))


def print_table(results: list[dict], console, device: str) -> None:
    from rich.table import Table

    table = Table("case", "measurements", title=f"fastmbr bench — {device}")
    for r in results:
        cells = ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in r.items() if k != "case")
        table.add_row(r["case"], cells)
    console.print(table)
