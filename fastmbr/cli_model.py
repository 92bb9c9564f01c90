"""``fastmbr model train|sample|score`` and ``fastmbr export``: learn, inspect, judge and export a MUNIT G.

Commands raise FastmbrError for anything the user got wrong; the top-level CLI prints it as one
``error: ...`` line with exit status 2 (so does ``python -m fastmbr.cli_model``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from fastmbr.errors import FastmbrError

model_app = typer.Typer(help="Learned models of natural variation (MUNIT): train, sample, score.",
                        no_args_is_help=True, add_completion=False)


def resolve_device(device: str):
    from fastmbr.engine.trainer import resolve_device as resolve

    return resolve(device)


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise FastmbrError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def tiny_cpu_threads(size: str, device) -> Optional[int]:
    """One intra-op thread for the tiny preset on a CPU: its 16-channel convolutions gain at most 1.5× from a
    second thread, while on a busy 2-core machine OpenMP's spinning threads made a step 20× slower (0.43 s → 8.6 s).
    """
    return 1 if size == "tiny" and device.type == "cpu" else None


def _domains_from_dataset(dataset: str, shift: Optional[str], data_dir: Optional[Path], classes: Optional[str],
                          image_size: Optional[int] = None, labelled_a: bool = False):
    """(A's images with labels, B's uint8 images, what they are, number of classes) for learning G."""
    from fastmbr.pipelines.datasets import load_domains

    domains = load_domains(dataset, shift, data_dir, classes=classes, image_size=image_size)
    for role in ("A", "B"):
        if role not in domains.unlabeled:
            raise FastmbrError(f"{dataset} {domains.shift.label}: no unlabelled images of domain {role} to learn G")
    # the semantic term needs labels of A: then G learns from A's labelled training split, never its validation
    pool_a = domains.train if labelled_a else domains.unlabeled["A"]
    source = {"dataset": dataset, "shift": domains.shift.kind, "domain_a": domains.shift.a,
              "domain_b": domains.shift.b, "images_a": len(pool_a), "images_b": len(domains.unlabeled["B"]),
              "pool_a": "labelled training split" if labelled_a else "all training images", "classes": classes,
              "notes": domains.notes}
    return pool_a, domains.unlabeled["B"].images, source, domains.num_classes


def parse_snapshots(text: Optional[str]) -> tuple[int, ...]:
    """``"10,100,1000"`` → (10, 100, 1000); one-line error naming --snapshots otherwise."""
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise FastmbrError(f"--snapshots takes iterations separated by commas (e.g. 10,100,1000), got {text!r}") \
            from None


@model_app.command("train")
def train_command(
    dataset: Optional[str] = typer.Argument(None, help="dataset name (or use --a-dir and --b-dir)"),
    shift: Optional[str] = typer.Option(None, "--shift", help="shift defining domains A and B"),
    size: str = typer.Option("tiny", "--size", help="tiny (28-32 px digits), mid or base (MUNIT's own networks, "
                                                    "the paper's setting; critics fitted to 32 px)"),
    iters: Optional[int] = typer.Option(None, "--iters", help="iterations (default: the size preset's)"),
    out: Path = typer.Option(..., "--out", help="G_DIR to write G, checkpoints and sample grids into"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="learning rate (default: the size preset's)"),
    classes: Optional[str] = typer.Option(None, "--classes", help="learn G from these classes only, e.g. 0-9"),
    lr_step: Optional[int] = typer.Option(None, "--lr-step",
                                          help="halve the lr every N iterations (default: the size preset's)"),
    style_dim: int = typer.Option(8, "--style-dim", help="q, the dimension of δ"),
    cycle: float = typer.Option(0.0, "--cycle", help="weight of MUNIT's explicit cycle loss x → B → A ≈ x "
                                                     "(recon_x_cyc_w; 0: off, as MUNIT's default)"),
    semantic: float = typer.Option(0.0, "--semantic",
                                   help="ours, beyond the paper: weight of the label-preserving loss (a frozen "
                                        "classifier of A's labelled training split must give G(x_A, δ) the label "
                                        "of x_A; CyCADA's semantic consistency). 0: off, as the paper"),
    prior: str = typer.Option("gaussian", "--prior", help="prior of δ: gaussian (truncated to the box) or uniform"),
    bound: float = typer.Option(2.0, "--bound", help="Δ = [-bound, bound]^q (the paper's §7.2: 1)"),
    snapshots: Optional[str] = typer.Option(None, "--snapshots",
                                            help="also keep G at these iterations, e.g. 10,100,1000 "
                                                 "(G_DIR/snapshots/iter_N, each a G_DIR)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    resume: bool = typer.Option(False, "--resume", help="continue from G_DIR/checkpoint.pt"),
    a_dir: Optional[Path] = typer.Option(None, "--a-dir", help="folder of unlabelled domain-A images"),
    b_dir: Optional[Path] = typer.Option(None, "--b-dir", help="folder of unlabelled domain-B images"),
    image_size: Optional[int] = typer.Option(None, "--image-size",
                                             help="resize images (folders or the dataset's) to this side"),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every"),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="CPU threads for torch (default: 1 for --size tiny on a CPU)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Learn G: A → B from unpaired images of two domains."""
    from fastmbr.variation.munit.folders import read_folder
    from fastmbr.variation.munit.train import MunitTrainConfig, train_munit

    from fastmbr.engine.validate import validate_model_train_flags

    validate_model_train_flags(image_size, iters, lr, lr_step)  # before any data is read or file written
    dev = resolve_device(device)
    _set_threads(threads if threads is not None else tiny_cpu_threads(size, dev))
    if (a_dir is None) != (b_dir is None):
        raise FastmbrError("--a-dir and --b-dir go together")
    if a_dir is not None:
        if dataset is not None:
            raise FastmbrError(f"give either DATASET ({dataset}) or --a-dir/--b-dir, not both")
        domain_a = read_folder(a_dir, image_size)
        domain_b = read_folder(b_dir, domain_a.shape[-1])
        source = {"a_dir": str(a_dir), "b_dir": str(b_dir), "images_a": len(domain_a), "images_b": len(domain_b)}
        labels_a = num_classes = None
    elif dataset is None:
        raise FastmbrError("missing DATASET (or --a-dir and --b-dir)")
    else:
        pool_a, domain_b, source, num_classes = _domains_from_dataset(dataset, shift, data_dir, classes, image_size,
                                                                      labelled_a=semantic > 0)
        domain_a, labels_a = pool_a.images, pool_a.labels
    cfg = MunitTrainConfig(size=size, style_dim=style_dim, iters=iters, batch_size=batch_size, lr=lr,
                           lr_step=lr_step, recon_x_cyc=cycle, semantic=semantic, prior=prior, bound=bound,
                           snapshots=parse_snapshots(snapshots), checkpoint_every=checkpoint_every, seed=seed,
                           source=source)
    train_munit(domain_a, domain_b, cfg, out, dev, progress=progress, resume=resume, labels_a=labels_a,
                num_classes=num_classes)
    typer.echo(f"G saved to {out} (G.safetensors, G.json; samples in {out / 'samples'})")


@model_app.command("sample")
def sample_command(
    g_dir: Path = typer.Argument(..., help="a trained G_DIR"),
    dataset: str = typer.Option(..., "--dataset"),
    shift: Optional[str] = typer.Option(None, "--shift"),
    k: int = typer.Option(8, "--k", help="style draws per input"),
    rows: int = typer.Option(8, "--rows", help="domain-A test inputs"),
    out: Path = typer.Option(..., "--out", help="PNG grid to write"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """A grid: rows are domain-A test images; columns the input, k draws of G(x, δ), a real B image."""
    import torch

    from fastmbr.pipelines.datasets import load_domains
    from fastmbr.variation.munit.io import load_variation
    from fastmbr.variation.munit.train import save_grid

    if k < 1 or rows < 1:
        raise FastmbrError(f"--k and --rows must be >= 1, got {k} and {rows}")
    dev = resolve_device(device)
    g = load_variation(g_dir, dev)
    domains = load_domains(dataset, shift, data_dir, image_size=g.image_size)  # the size G was trained at
    test_a, test_b = domains.test["A"], domains.test.get("B", domains.test["A"])
    n = min(rows, len(test_a), len(test_b))
    xa = test_a.images[:n].to(dev).float() / 255
    xb = test_b.images[:n].to(dev).float() / 255
    deltas = g.sample_delta(n, k, torch.Generator().manual_seed(seed)).to(dev)
    save_grid(g, xa, xb, deltas, out)
    typer.echo(f"wrote {out}")


@model_app.command("score")
def score_command(
    g_dir: Path = typer.Argument(..., help="a trained G_DIR"),
    dataset: str = typer.Option(..., "--dataset"),
    shift: Optional[str] = typer.Option(None, "--shift"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    epochs: int = typer.Option(10, "--epochs", help="epochs of the helper classifiers"),
    max_train: int = typer.Option(20000, "--max-train", help="helper training images (A ∪ B)"),
    max_test: Optional[int] = typer.Option(None, "--max-test"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="default: G_DIR/score_cache"),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
) -> None:
    """Content kept (oracle accuracy on G(x_A, δ)) and shift achieved (share called B)."""
    from fastmbr.pipelines.datasets import load_domains
    from fastmbr.variation.munit.io import load_variation, read_meta
    from fastmbr.variation.munit.score import ScoreConfig, describe_g, score

    _set_threads(threads)
    if epochs < 1 or max_train < 2:
        raise FastmbrError(f"--epochs must be >= 1 and --max-train >= 2, got {epochs} and {max_train}")
    dev = resolve_device(device)
    g = load_variation(g_dir, dev)
    domains = load_domains(dataset, shift, data_dir, image_size=g.image_size)  # the size G was trained at
    result = score(g, domains, dev, cache_dir or Path(g_dir) / "score_cache",
                   ScoreConfig(epochs=epochs, max_train=max_train, max_test=max_test), describe_g(read_meta(g_dir)))
    result["data"] = domains.notes
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_score(result)


@model_app.command("report")
def report_command(
    g_dirs: list[Path] = typer.Argument(..., help="trained G_DIRs (their snapshots are rows too)"),
    dataset: str = typer.Option(..., "--dataset"),
    shift: Optional[str] = typer.Option(None, "--shift"),
    out: Path = typer.Option(Path("results/g_quality.md"), "--out", help="the Markdown table to write"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="shared helper cache (default: score_cache beside the first G)"),
    device: str = typer.Option("auto", "--device"),
    threads: Optional[int] = typer.Option(None, "--threads"),
) -> None:
    """Score several G variants the same way and write one table (results/g_quality.md) with their grids."""
    from fastmbr.variation.munit.quality import write_report

    _set_threads(threads)
    dev = resolve_device(device)
    command = "fastmbr model report " + " ".join(str(g) for g in g_dirs) + f" --dataset {dataset}" + \
        (f" --shift {shift}" if shift else "") + f" --out {out}" + \
        (f" --data-dir {data_dir}" if data_dir else "") + (f" --cache-dir {cache_dir}" if cache_dir else "")
    path = write_report(list(g_dirs), dataset, shift, str(data_dir) if data_dir else None, str(dev), Path(out),
                        cache_dir or Path(g_dirs[0]).parent / "score_cache", command)
    typer.echo(f"wrote {path}")


def _print_score(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from fastmbr.variation.munit.score import kept_in_all_draws

    table = Table(title=f"G on {result['dataset']} {result['shift']} ({result['n_test']} test images of A)")
    table.add_column("images")
    table.add_column("content kept (oracle top-1)", justify="right")
    table.add_column("shift achieved (called B)", justify="right")
    for label, r in (("G(x_A, δ)", result), ("x_A (identity)", result["identity"]), ("real B", result["real_b"])):
        table.add_row(label, f"{100 * r['content_kept']:.1f}%", f"{100 * r['shift_achieved']:.1f}%")
    console = Console()
    console.print(table)
    draws, kept = kept_in_all_draws(result)
    g = result["g"]
    console.print(f"content kept: {result['content_kept_vs_identity']:.2f}× the identity's; in all of "
                  f"{draws} draws: {100 * kept:.1f}%")
    console.print(f"G: {g.get('preset')} preset, {g.get('iterations')} iterations at batch {g.get('batch_size')}, "
                  f"{g.get('train_minutes')} min, semantic {g.get('semantic')}")
    oracle = result["helpers"]["oracle_top1"]
    if min(oracle.values()) < 0.9:
        console.print(f"[yellow]warning: the oracle reaches only {100 * oracle['real_a']:.1f}% / "
                      f"{100 * oracle['real_b']:.1f}% on real A / B: a weak judge (raise --epochs)[/yellow]")


def export_command(src: Path, onnx: Path, opset: int = 17) -> Path:
    """Export the G in G_DIR ``src`` to ONNX: inputs ``x`` [B, C, H, W] in [0, 1] and ``delta`` [B, q]."""
    import torch

    from fastmbr.variation.munit.io import load_variation

    if opset < 17:
        raise FastmbrError(f"ONNX export needs opset >= 17, got {opset}")
    try:
        import onnx as _onnx  # noqa: F401
    except ImportError:
        raise FastmbrError("ONNX export needs the onnx package: pip install 'fastmbr[export]'") from None
    g = load_variation(src, "cpu")
    g.decoder.subpixel = False  # the plain upsample + conv traces to a simpler graph; runtimes optimise it
    x = torch.rand(2, g.arch.channels, g.image_size, g.image_size)
    delta = g.sample_delta(2, 1, torch.Generator().manual_seed(0))[0]
    onnx = Path(onnx)
    onnx.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the shape checks, constant under export
        torch.onnx.export(g, (x, delta), str(onnx), dynamo=False, opset_version=opset,
                          input_names=["x", "delta"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "delta": {0: "batch"}, "y": {0: "batch"}})
    return onnx


def main() -> None:
    try:
        model_app()
    except FastmbrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
