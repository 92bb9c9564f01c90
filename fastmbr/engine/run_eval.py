"""Scoring saved runs: a trained classifier (best.pt) on any dataset's test domains, under one or many shifts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastmbr.config import RunConfig
from fastmbr.engine import checkpoint as ckpt
from fastmbr.engine.evaluate import accuracy, shift_summary
from fastmbr.engine.resume_check import check_model_hashes
from fastmbr.engine.rundir import read_run_config
from fastmbr.engine.trainer import Trainer
from fastmbr.errors import FastmbrError
from fastmbr.pipelines.datasets import Splits, expand_shifts, read_splits


def evaluation_config(run_dir: Path, dataset: str | None, shift: str | None, data_dir: str | None,
                      device: str = "auto", skip_corrupt: bool | None = None) -> RunConfig:
    """A run's configuration pointed at the data to score it on (by default: what it was trained on)."""
    if not (run_dir / "config.json").exists():
        raise FastmbrError(f"{run_dir}: not a run folder (no config.json)")
    saved = read_run_config(run_dir / "config.json")
    check_model_hashes(saved.get("models_sha256", {}), run_dir, missing_ok=True)
    cfg = RunConfig.from_dict(saved)
    data = replace(cfg.data, dataset=dataset or cfg.data.dataset, shift=shift if dataset or shift else cfg.data.shift,
                   data_dir=data_dir or cfg.data.data_dir,
                   skip_corrupt=cfg.data.skip_corrupt if skip_corrupt is None else skip_corrupt)
    return replace(cfg, data=data, device=device, compile=False)


def evaluation_trainer(cfg: RunConfig, run_dir: Path, splits: Splits | None = None) -> Trainer:
    """A trainer holding the run's classifier (best.pt) and the test domains ``cfg`` names."""
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.channels_last = False
    trainer.domains = trainer.load_data(test_only=True, splits=splits)
    trainer.model = trainer.build_model()
    weights = ckpt.load_weights(run_dir / "best.pt")
    try:
        trainer.model.load_state_dict(weights)
    except RuntimeError:
        raise FastmbrError(f"{run_dir}/best.pt does not fit {cfg.data.dataset}: class count or image size "
                           f"differs") from None
    return trainer


def evaluate_run(run_dir: Path, dataset: str | None, shift: str | None, data_dir: str | None,
                 device: str = "auto", skip_corrupt: bool | None = None) -> dict:
    """Score a trained classifier (best.pt) on any dataset's test domains (how transfer is scored); a domain
    whose loader left files out (``skip_corrupt``, default: as trained) lists them under ``unreadable_files``."""
    trainer = evaluation_trainer(evaluation_config(run_dir, dataset, shift, data_dir, device, skip_corrupt), run_dir)
    return {name: score_domain(trainer, d) for name, d in trainer.domains.test.items()}


def evaluate_shifts(run_dir: Path, dataset: str | None, shifts: list[str], data_dir: str | None,
                    device: str = "auto", skip_corrupt: bool | None = None) -> dict[str, dict]:
    """``evaluate_run`` under each shift (``corruption:all`` expanded), the data read and the classifier loaded
    once, with the summary of ``shift_summary``. Domain A of a corruption shift is the clean test split whatever
    the corruption: scored once, its scores repeated."""
    base = evaluation_config(run_dir, dataset, None, data_dir, device, skip_corrupt)
    shifts = expand_shifts(base.data.dataset, shifts, base.data.data_dir)
    splits = read_splits(base.data.dataset, base.data.data_dir, base.data.skip_corrupt)
    trainer, results, clean = None, {}, None
    for shift in shifts:
        cfg = replace(base, data=replace(base.data, shift=shift))
        if trainer is None:
            trainer = evaluation_trainer(cfg, run_dir, splits)
        else:
            trainer.cfg = cfg
            trainer.domains = trainer.load_data(test_only=True, splits=splits)
        corruption = trainer.domains.shift.kind == "corruption"
        results[shift] = {}
        for name, data in trainer.domains.test.items():
            reuse = corruption and name == "A" and clean is not None
            results[shift][name] = clean if reuse else score_domain(trainer, data)
            if corruption and name == "A":
                clean = results[shift][name]
    return shift_summary(results, base.data.dataset)


def score_domain(trainer: Trainer, data) -> dict:
    """Accuracy on one test domain, with the files left out of it (when the test split was read, or by the
    loader) under ``unreadable_files``."""
    loader = trainer.loader(data, train=False)
    result = accuracy(trainer.model, loader, trainer.device)
    unreadable = [*trainer.domains.unreadable, *getattr(loader, "skipped", [])]
    return {**result, "unreadable_files": unreadable} if unreadable else result
