"""Opening a run folder for training: a new run made, or the same run reopened at its newest checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastmbr.config import RunConfig
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.distributed import DistInfo, broadcast_object
from fastmbr.engine.resume_check import model_hashes, resumed_config
from fastmbr.engine.rundir import default_run_dir, git_sha, make_run_folder, read_run_config, write_run_config
from fastmbr.errors import FastmbrError

if TYPE_CHECKING:
    from fastmbr.engine.trainer import TrainOptions


@dataclass
class OpenedRun:
    """What rank 0 found or made in the run folder; every rank receives it."""

    cfg: RunConfig
    options: TrainOptions
    run_dir: Path
    checkpoint: Path | None = None
    reopened: bool = False
    created: bool = False  # the folder was made by this start (removed again if set-up refuses the run)


def open_run_folder(cfg: RunConfig, resume: bool | str, options: TrainOptions,
                    given: set[str] | None = None) -> tuple[OpenedRun, dict | None]:
    """Create or reopen the run folder (rank 0 only); never overwrite a run that exists unless resuming it, and
    resume only the same run (``resume_check``: ``given`` are the config paths the user set, None: all).

    Returns the run and the newest checkpoint that loads (None for a new run or one without checkpoints)."""
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.data.dataset, cfg.algo.name)
    config_path = run_dir / "config.json"
    if resume == "auto":
        resume = config_path.exists()
    if resume:
        if not config_path.exists():
            raise FastmbrError(f"--resume: {run_dir} holds no run (no config.json)")
        saved_json = read_run_config(config_path)
        saved, resumed_options = resumed_config(saved_json, cfg, options, given, run_dir)
        ckpt.remove_stale_temps(run_dir)
        path, state = ckpt.latest_loadable(run_dir)
        return OpenedRun(saved, resumed_options, run_dir, path, True), state
    if config_path.exists():
        raise FastmbrError(f"{run_dir} already holds a run; pass --resume to continue it or another --out")
    created = make_run_folder(run_dir)
    write_run_config(config_path, {**cfg.to_dict(), "options": asdict(options), "commit": git_sha(),
                                   "models_sha256": model_hashes(cfg.algo.models)})
    return OpenedRun(cfg, options, run_dir, created=created), None


def open_run(cfg: RunConfig, resume: bool | str, options: TrainOptions,
             dist: DistInfo, given: set[str] | None = None) -> tuple[OpenedRun, dict | None]:
    """Rank 0 opens the folder and picks the checkpoint; every rank gets the same answer (or the same error)
    and then loads that same file: the broadcast is the barrier between rank 0's writes and the others' reads."""
    answer, state = None, None
    if dist.is_main:
        try:
            answer, state = open_run_folder(cfg, resume, options, given)
        except FastmbrError as exc:
            answer = str(exc)
    answer = broadcast_object(answer, dist)
    if isinstance(answer, str):
        raise FastmbrError(answer)
    if not dist.is_main and answer.checkpoint is not None:
        state = ckpt.safe_load(answer.checkpoint)
    return answer, state
