"""`make run`: ERM vs MRT-10 on MNIST, background colour blue (A) → red (B), with the known model (Algorithm 1)."""

from __future__ import annotations

from pathlib import Path

from fastmbr.config import preset_config
from fastmbr.engine.trainer import train


def run_main_job(data_dir: str | None, epochs: int, out: Path, device: str, seed: int, console=None) -> list[dict]:
    rows = []
    for algo in ("erm", "mrt"):
        cfg = preset_config("mnist", algo, "background-color")
        cfg.data.data_dir = data_dir
        cfg.optim.epochs = epochs
        cfg.device, cfg.seed = device, seed
        cfg.out = str(_fresh(out / algo))
        if console is not None:
            console.print(f"[bold]{algo.upper()}{'-' + str(cfg.algo.k or 10) if algo == 'mrt' else ''}[/bold] "
                          f"on MNIST background colour (blue→red), {epochs} epochs → {cfg.out}")
        metrics, _ = train(cfg, progress=console is not None)
        metrics["algorithm"] = "MRT-10" if algo == "mrt" else "ERM"
        rows.append(metrics)
    return rows


def _fresh(path: Path) -> Path:
    """A new run folder next to ``path`` when it already holds a run (earlier runs are never overwritten)."""
    candidate, n = path, 1
    while (candidate / "config.json").exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
