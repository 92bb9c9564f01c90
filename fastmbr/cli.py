"""The fastmbr command line. Flags map onto the typed config; FastmbrError becomes one ``error:`` line, exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from fastmbr.errors import FastmbrError

INTERRUPTED = 130  # exit status of a run stopped by Ctrl-C (128 + SIGINT)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Model-based robust deep learning (MRT, MAT, MDA) with known and learned models of variation.")
datasets_app = typer.Typer(no_args_is_help=False, invoke_without_command=True, help="List datasets, shifts and domains.")
app.add_typer(datasets_app, name="datasets")
console = Console()


def _mount_optional_commands() -> None:
    """Commands whose modules are optional extras (learned models, bench) are mounted when they import."""
    try:
        from fastmbr.cli_model import model_app
    except ImportError:
        return
    app.add_typer(model_app, name="model", help="Learn, sample, score learned models of variation (MUNIT).")


@app.command()
def train(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="dataset name (fastmbr datasets)"),
    shift: Optional[str] = typer.Option(None, help="shift, e.g. background-color, brightness, brightness:high-low"),
    algo: str = typer.Option("erm", "--algo", help="erm | pgd | mrt | mat | mda | augmix"),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="draws (MRT, MDA) or ascent steps (MAT, PGD)"),
    lam: Optional[float] = typer.Option(None, "--lambda", help="weight λ of the clean loss"),
    alpha: Optional[float] = typer.Option(None, help="ascent step size (MAT, PGD)"),
    model: list[str] = typer.Option([], "--model", help="known:NAME or a G folder; repeat to compose G1(G2(x)): "
                                                        "the first --model is the outermost"),
    select: Optional[str] = typer.Option(None, help="MRT: sample (per-sample worst draw; default) | batch (the draw "
                                                    "set with the largest batch loss: the paper's Algorithm 2)"),
    mat_init: Optional[str] = typer.Option(None, help="MAT: sample (a prior draw; default) | zero (Algorithm 3)"),
    mat_step: Optional[str] = typer.Option(None, help="MAT: sign (signed steps; default) | grad (Algorithm 3)"),
    loss_reduction: Optional[str] = typer.Option(None, help="MRT/MAT/MDA/PGD: sum (Σ copies + λ·clean; default) | "
                                                            "mean (over the k + 1 copies, as the reference code)"),
    shared_delta: bool = typer.Option(False, "--shared-delta", help="composed models: one δ for every --model "
                                                                    "(Eq. 6.1; their δ spaces must agree)"),
    arch: Optional[str] = typer.Option(None, help="cnn | resnet18 | resnet34 | resnet50"),
    epochs: Optional[int] = typer.Option(None, help="epochs (preset: the paper's)"),
    warmup_epochs: Optional[int] = typer.Option(None, help="ERM epochs before the robust algorithm"),
    batch_size: Optional[int] = typer.Option(None, help="global batch size"),
    lr: Optional[float] = typer.Option(None, help="learning rate"),
    optimizer: Optional[str] = typer.Option(None, help="adadelta | sgd | adam"),
    image_size: Optional[int] = typer.Option(None, help="resize images to this size"),
    augment: Optional[str] = typer.Option(None, help="none | crop | crop-flip | rrc-flip"),
    loader: str = typer.Option("auto", help="auto | tensor | torch | dali | ffcv | nvjpeg"),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="leave out image files that do not decode "
                                                                     "(logged, listed in metrics.json) instead "
                                                                     "of stopping"),
    max_resolution: Optional[int] = typer.Option(None, help="ffcv: store image files with their longer side at "
                                                             "most N pixels (FFCV's ImageNet recipe: 256-512)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    data_dir: Optional[str] = typer.Option(None, help="data root (default $FASTMBR_DATA)"),
    limit: Optional[int] = typer.Option(None, help="use only the first N training images"),
    classes: Optional[str] = typer.Option(None, help="keep only these classes, e.g. 10-199 or 0,3,7"),
    train_also: Optional[str] = typer.Option(None, help="also train on this shift's domain B, labelled (the "
                                                        "'+Aug' baselines), e.g. challenge:snow-2"),
    seed: int = typer.Option(0),
    out: Optional[str] = typer.Option(None, help="run folder (default runs/<dataset>-<algo>-<time>)"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last checkpoint"),
    auto_resume: bool = typer.Option(False, "--auto-resume",
                                     help="continue the run in --out if it holds one, else start it there: one "
                                          "command line for the first start and every restart (torchrun "
                                          "--max-restarts, requeued jobs)"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile (default: on CUDA)"),
    compile_mode: str = typer.Option("default", help="default | reduce-overhead (CUDA graphs) | max-autotune"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default: on CUDA)"),
    checkpoint_every: int = typer.Option(0, help="also checkpoint every N steps inside an epoch"),
    max_nonfinite: int = typer.Option(5, help="NaN/inf losses in a row tolerated (each skips its step)"),
    keep_checkpoints: int = typer.Option(2, help="how many of the newest checkpoints to keep"),
    log_every: int = typer.Option(50, help="steps between progress updates and train.log loss lines"),
    accumulate: int = typer.Option(1, help="micro-batches per step on each process (gradient accumulation)"),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="SyncBatchNorm across processes (CUDA, torchrun)"),
    dropout: bool = typer.Option(True, "--dropout/--no-dropout", help="--no-dropout replaces Dropout by identity"),
    deterministic: bool = typer.Option(False, "--deterministic", help="torch.use_deterministic_algorithms(True)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also write TensorBoard scalars and G(x, δ) "
                                                                  "samples each epoch (RUN/tensorboard)"),
):
    """Train a classifier with one algorithm on domain A and test it on the shifted domains.

    Under torchrun (torchrun --nproc_per_node N -m fastmbr train ...) the same command trains data-parallel;
    --batch-size stays the global batch.
    """
    from os import environ

    from fastmbr.algorithms.options import algorithm_options
    from fastmbr.config import preset_config
    from fastmbr.engine.trainer import TrainOptions
    from fastmbr.engine.trainer import train as run_train

    if auto_resume and not out:
        raise FastmbrError("--auto-resume needs --out: a restart must find the same run folder")
    if tensorboard:
        from fastmbr.engine.logging import check_tensorboard

        check_tensorboard()  # before the run folder is made

    cfg = preset_config(dataset, algo, shift)
    overrides = {
        "k": k, "lam": lam, "alpha": alpha, "select": select, "mat_init": mat_init, "mat_step": mat_step,
        "loss_reduction": loss_reduction,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg.algo, key, value)
    if model:
        cfg.algo.models = list(model)
    cfg.algo.shared_delta = shared_delta
    for key, value in {"epochs": epochs, "warmup_epochs": warmup_epochs, "lr": lr, "optimizer": optimizer}.items():
        if value is not None:
            setattr(cfg.optim, key, value)
    for key, value in {"batch_size": batch_size, "image_size": image_size, "augment": augment,
                       "data_dir": data_dir, "limit": limit, "classes": classes, "train_also": train_also}.items():
        if value is not None:
            setattr(cfg.data, key, value)
    cfg.data.loader, cfg.data.skip_corrupt, cfg.data.max_resolution = loader, skip_corrupt, max_resolution
    cfg.arch = arch or cfg.arch
    cfg.device, cfg.seed, cfg.out = device, seed, out
    cfg.compile, cfg.amp, cfg.checkpoint_every, cfg.max_nonfinite = compile, amp, checkpoint_every, max_nonfinite
    cfg.compile_mode = compile_mode
    cfg.keep_checkpoints, cfg.log_every = keep_checkpoints, log_every
    algorithm_options(cfg.algo)  # a variant flag the algorithm has no use for: one line, before any data loads
    options = TrainOptions(accumulate=accumulate, sync_bn=sync_bn, dropout=dropout, deterministic=deterministic,
                           tensorboard=tensorboard)
    from fastmbr.engine.resume_check import given_fields

    metrics, run_dir = run_train(cfg, resume="auto" if auto_resume else resume, progress=progress, options=options,
                                 given=given_fields(ctx))
    if environ.get("RANK", "0") == "0":
        print_metrics_table([metrics])
        console.print(f"run folder: {run_dir}")


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="a run folder written by fastmbr train"),
    dataset: Optional[str] = typer.Option(None, help="evaluate on another dataset (transfer)"),
    shift: list[str] = typer.Option([], help="the shift (default: as trained); repeat for several, or "
                                              "corruption:all for every corruption and severity"),
    data_dir: Optional[str] = typer.Option(None),
    device: str = typer.Option("auto"),
    skip_corrupt: Optional[bool] = typer.Option(None, "--skip-corrupt/--no-skip-corrupt",
                                                help="leave out image files that do not decode (default: as the "
                                                     "run was trained)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Top-1/top-5 of a trained classifier on a dataset's test domains (under one shift or several)."""
    from fastmbr.engine.run_eval import evaluate_run, evaluate_shifts
    from fastmbr.pipelines.datasets import ALL_CORRUPTIONS, unreadable_note

    if len(shift) > 1 or shift == [ALL_CORRUPTIONS]:
        print_shift_scores(evaluate_shifts(run_dir, dataset, shift, data_dir, device, skip_corrupt), as_json)
        return
    result = evaluate_run(run_dir, dataset, shift[0] if shift else None, data_dir, device, skip_corrupt)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("domain", "top-1", "top-5", "n")
    for name, r in result.items():
        table.add_row(name, f"{r['top1']:.2f}", f"{r['top5']:.2f}", str(r["n"]))
    console.print(table)
    for name, r in result.items():
        if r.get("unreadable_files"):
            console.print(f"{name}: {unreadable_note(r['unreadable_files'])}")


def print_shift_scores(summary: dict, as_json: bool) -> None:
    """Each shift's domains, then the mean over the shifted domains B (and ImageNet-C's mCE where defined)."""
    from fastmbr.pipelines.datasets import unreadable_note

    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table("shift", "domain", "top-1", "top-5", "n")
    for shift, domains in summary["shifts"].items():
        for name, r in domains.items():
            table.add_row(shift, name, f"{r['top1']:.2f}", f"{r['top5']:.2f}", str(r["n"]))
    console.print(table)
    for shift, domains in summary["shifts"].items():
        for name, r in domains.items():
            if r.get("unreadable_files"):
                console.print(f"{shift} {name}: {unreadable_note(r['unreadable_files'])}")
    mean = summary["mean_b"]
    if mean["shifts"]:
        console.print(f"mean over the {mean['shifts']} shifted domains B: top-1 {mean['top1']:.2f}, "
                      f"top-5 {mean['top5']:.2f}")
    if "mce" in summary:
        console.print(f"ImageNet-C mCE (AlexNet-normalised): {summary['mce']:.2f}")


@app.command("run")
def main_job(
    data_dir: Optional[str] = typer.Option(None, help="use the full MNIST here instead of the embedded subset"),
    epochs: int = typer.Option(3, help="epochs for each algorithm (3 keeps make run under 5 minutes on 2 cores)"),
    shift: str = typer.Option("background-color:blue-yellow",
                              help="background colours A-B; background-color:blue-red is the paper's setting"),
    out: str = typer.Option("runs/main", help="parent folder of the two runs"),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    limit: Optional[int] = typer.Option(None, help="use only the first N training images (a quick try)"),
):
    """The main job: ERM vs MRT-10 with the known background-colour model, MNIST blue → yellow backgrounds."""
    from fastmbr.engine.main_job import reading, run_main_job, write_samples

    rows = run_main_job(data_dir=data_dir, epochs=epochs, out=Path(out), device=device, seed=seed, console=console,
                        shift=shift, limit=limit)
    print_metrics_table(rows)
    console.print(reading(rows))
    console.print("wall: " + ", ".join(f"{r['algorithm']} {r['wall_s']:.0f} s" for r in rows)
                  + f"; samples of A, B and G(x, δ): {write_samples(rows, shift, data_dir, seed)}")


@app.command("runs")
def runs_command(
    root: Path = typer.Argument(Path("runs"), help="folder holding run folders (searched recursively)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """The run folders under ROOT: dataset, shift, algorithm, k, epochs, A/B top-1, status."""
    from fastmbr.engine.runs import list_runs, print_runs

    print_runs(list_runs(root), root, as_json)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="few cases, small sizes (< 3 minutes on 2 CPU cores)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile G's encoder and decoder"),
    amp: bool = typer.Option(False, "--amp", help="G.expand (amp vs amp) and ERM's step in bf16 autocast; full "
                                                  "steps always run at fp32/fp32 and at amp/amp"),
    only: list[str] = typer.Option([], "--only", help="run only cases whose name contains this"),
    size: Optional[str] = typer.Option(None, help="MUNIT size preset: tiny | base"),
    image_size: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    arch: Optional[str] = typer.Option(None),
    out: Path = typer.Option(Path("bench/results"), help="folder for the JSON result"),
):
    """Time the stages (G.expand, classifier, full step per algorithm × k, loaders, kernels) against the reference."""
    from fastmbr.bench.report import run_bench

    if device != "auto":
        from fastmbr.engine.trainer import resolve_device

        resolve_device(device)
    run_bench(device, quick, compile, out, only or None, console, size, image_size, batch_size, arch, amp)


@app.command()
def repro(
    name: str = typer.Argument(..., help="recipe name in experiments/ (e.g. t6_gtsrb_brightness)"),
    seeds: Optional[int] = typer.Option(None, help="number of seeds (recipe default: 3)"),
    full: bool = typer.Option(False, "--full", help="the paper's settings (GPU machines)"),
    report: bool = typer.Option(False, "--report", help="only regenerate results/NAME.md from the run folders"),
    data_dir: Optional[str] = typer.Option(None),
    device: str = typer.Option("auto"),
    root: Path = typer.Option(Path("runs/repro"), help="where the recipe's run folders go"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="run only these runs of the recipe (repeatable)"),
):
    """Run a paper experiment recipe (every algorithm × seed) and write its results table."""
    from fastmbr.repro.report import write_report
    from fastmbr.repro.runner import run_recipe

    path = write_report(name, root, full) if report else run_recipe(name, seeds, full, data_dir, device, root,
                                                                    console, only)
    console.print(path.read_text())
    console.print(f"written: {path}")


@app.command()
def export(
    src: Path = typer.Argument(..., help="a G folder (G.json) or a run folder (config.json + best.pt)"),
    onnx: Path = typer.Option(..., "--onnx", help="output .onnx file"),
    opset: int = typer.Option(17),
):
    """Export a learned model of variation (inputs x, delta) or a trained classifier (input x) to ONNX."""
    if (src / "G.json").exists():
        from fastmbr.cli_model import export_command

        path = export_command(src, onnx, opset)
    else:
        from fastmbr.engine.export import export_classifier

        path = export_classifier(src, onnx, opset)
    console.print(f"written: {path}")


@datasets_app.callback()
def datasets_list(ctx: typer.Context, data_dir: Optional[str] = typer.Option(None)):
    """List datasets, their shifts and where each was found."""
    if ctx.invoked_subcommand is not None:
        return
    from fastmbr.pipelines.datasets import DATASETS, dataset_root

    table = Table("dataset", "classes", "size", "splits", "shifts", "found at")
    for name, info in sorted(DATASETS.items()):
        try:
            root = dataset_root(info, data_dir)
            where = str(root) if root is not None else "embedded subset"
        except FastmbrError:
            where = "-"
        table.add_row(name, str(info.num_classes or "-"), str(info.image_size), "/".join(info.splits),
                      ", ".join(info.shifts), where)
    console.print(table)


@datasets_app.command("show")
def datasets_show(
    dataset: str,
    shift: Optional[str] = typer.Option(None),
    data_dir: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
):
    """Number of images per split and domain."""
    from fastmbr.pipelines.datasets import load_domains

    domains = load_domains(dataset, shift, data_dir)
    counts = domains.counts()
    if as_json:
        print(json.dumps(counts))
        return
    console.print(f"{dataset} — {domains.shift.label}")
    for note in domains.notes:
        console.print(f"note: {note}")
    console.print_json(json.dumps(counts))


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="dataset name (fastmbr datasets)"),
    shift: Optional[str] = typer.Option(None, help="e.g. corruption:snow-3 (fills the corruption cache)"),
    data_dir: Optional[str] = typer.Option(None),
    image_size: Optional[int] = typer.Option(None),
    fmt: str = typer.Option("cache", "--format", help="cache (corruptions only) or ffcv (.beton per domain)"),
    out: Optional[Path] = typer.Option(None, help="folder for the .beton files (default: the cache)"),
    max_resolution: Optional[int] = typer.Option(None, help="ffcv: store image files with their longer side at "
                                                             "most N pixels (train with the same flag)"),
):
    """Prepare a dataset once: corrupted domains into the on-disk cache, FFCV .beton files per domain."""
    from fastmbr.pipelines.datasets import load_domains
    from fastmbr.pipelines.prepare import beton_for, check_max_resolution, write_beton

    from fastmbr.engine.validate import MIN_IMAGE_SIZE, at_least

    at_least(image_size, "--image-size", MIN_IMAGE_SIZE, optional=True)
    if fmt not in ("cache", "ffcv"):
        raise FastmbrError(f"unknown --format {fmt!r}; known: cache, ffcv")
    if max_resolution is not None and fmt != "ffcv":
        raise FastmbrError("--max-resolution applies to --format ffcv")
    check_max_resolution(max_resolution)
    domains = load_domains(dataset, shift, data_dir, image_size=image_size)
    console.print(f"{dataset} — {domains.shift.label}: {json.dumps(domains.counts())}")
    if fmt == "ffcv":
        parts = {"train-A": domains.train, "val-A": domains.val, **{f"test-{k}": v for k, v in domains.test.items()}}
        for name, data in parts.items():
            if out:
                path = write_beton(data, out / f"{dataset}-{name}.beton", max_resolution=max_resolution)
            else:
                path = beton_for(data, max_resolution=max_resolution)
            console.print(f"{name}: {path}")


def print_metrics_table(rows: list[dict]) -> None:
    domains = sorted({d for r in rows for d in r["test"]})
    table = Table("algorithm", *[f"{d} test top-1" for d in domains], "val A top-1", "images/s",
                  title=f"{rows[0]['dataset']} — {rows[0]['shift']}")
    for r in rows:
        table.add_row(r["algorithm"], *[f"{r['test'][d]['top1']:.2f}" if d in r["test"] else "-" for d in domains],
                      f"{r['val'].get('top1', float('nan')):.2f}", f"{r['images_per_s']:,.0f}")
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every FastmbrError is one line on stderr and exit status 2."""
    from typer.exceptions import Abort, Exit, TyperException

    _mount_optional_commands()
    try:
        status = app(args=argv, standalone_mode=False)
    except FastmbrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors: typer prints them with the command's usage line
        if hasattr(exc, "show"):
            exc.show()
        else:
            print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if status == INTERRUPTED:  # typer returns an interrupt's exit status, without standalone mode, not raise it
        print("error: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
