"""Running a recipe: its learned models trained and scored once, every run × seed trained, shifts scored, report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastmbr.errors import FastmbrError
from fastmbr.repro.check import run_lock, stale_differences
from fastmbr.repro.recipe import (
    learned_model_dir,
    learned_model_spec,
    learned_models_used,
    load_recipe,
    run_config,
    shift_key,
    snapshots_used,
)
from fastmbr.repro.report import write_report

LOCK = ".repro.lock"  # flock'ed by the process running the folder (check.run_lock)


def run_recipe(name: str, seeds: int | None, full: bool, data_dir: str | None, device: str, root: Path,
               console=None, only: list[str] | None = None) -> Path:
    """Run every (or each ``only``) run of the recipe for each seed, then write its report."""
    from fastmbr.engine.trainer import train

    recipe = load_recipe(name)
    unknown = sorted(set(only or []) - set(recipe["runs"]))
    if unknown:
        raise FastmbrError(f"recipe {recipe['name']} has no run {', '.join(unknown)}; it has: "
                           f"{', '.join(recipe['runs'])}")
    ensure_learned_models(recipe, root, data_dir, device, only, full)
    score_learned_models(recipe, root, data_dir, device, only or list(recipe["runs"]), full)
    root = root / recipe["name"]
    for seed in range(seeds or recipe.get("seeds", 3)):
        for run in only or recipe["runs"]:
            cfg = run_config(recipe, run, seed, full, data_dir, device, root)
            out = Path(cfg.out)
            if link_shared_run(recipe, run, seed, out, cfg, console):
                continue
            with run_lock(out) as owner:
                if owner is not None:
                    if console is not None:
                        console.print(f"{recipe['name']}: {run} seed {seed} is being run by process {owner}; skipped")
                    continue
                found = stale_differences(out, cfg) if (out / "config.json").exists() else []
                if found:
                    raise FastmbrError(f"{out} was trained with another configuration than the recipe now gives "
                                       f"({'; '.join(found)}); refusing to reuse or overwrite it: move it away to "
                                       f"rerun {run} seed {seed}")
                if not (out / "metrics.json").exists():
                    if console is not None:
                        console.print(f"[bold]{recipe['name']}[/bold]: {run} seed {seed} → {out}")
                    train(cfg, resume=(out / "config.json").exists(), progress=console is not None)
                evaluate_shifts(recipe, out, data_dir, device)
    return write_report(name, root.parent, full)


def link_shared_run(recipe: dict, run: str, seed: int, out: Path, cfg, console) -> bool:
    """A run whose ``same_as: RECIPE/RUN`` names a finished run of another recipe with the very same resolved
    configuration (checked field by field, as a stale run is) is linked to it instead of trained twice; returns
    whether it was. Any difference, or the other run unfinished, and this run is trained as usual."""
    shared = recipe["runs"][run].get("same_as")
    if not shared or out.exists():
        return False
    other = out.parent.parent / f"{shared}-s{seed}"
    if not (other / "metrics.json").is_file() or stale_differences(other, cfg):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(os.path.relpath(other, out.parent), target_is_directory=True)
    if console is not None:
        console.print(f"{recipe['name']}: {run} seed {seed} is {shared} seed {seed} (same configuration): linked")
    return True


def ensure_learned_models(recipe: dict, root: Path, data_dir: str | None, device: str,
                          runs: list[str] | None = None, full: bool = False) -> None:
    """Train the learned models of variation (MUNIT) that the runs use, once; later recipes reuse the G folder, and
    an interrupted training resumes from its checkpoint."""
    from fastmbr.variation.munit.io import training_finished

    used = learned_models_used(recipe, runs or list(recipe["runs"]))
    for name in recipe.get("learned_models", {}):
        if name not in used:
            continue
        spec = learned_model_spec(recipe, name, full)
        g_dir = learned_model_dir(root, recipe, name, full)
        if training_finished(g_dir) or snapshots_ready(recipe, runs or list(recipe["runs"]), name, g_dir):
            check_learned_model(g_dir, spec, name)
            continue
        command = [sys.executable, "-m", "fastmbr", "model", "train", spec["dataset"], "--shift", spec["shift"],
                   "--size", spec.get("size", "tiny"), "--out", str(g_dir), "--device", device]
        command += ["--iters", str(spec["iters"])] if "iters" in spec else []
        command += ["--lr-step", str(spec["lr_step"])] if "lr_step" in spec else []
        command += ["--cycle", str(spec["cycle"])] if "cycle" in spec else []
        command += ["--classes", str(spec["classes"])] if "classes" in spec else []
        command += ["--image-size", str(spec["image_size"])] if "image_size" in spec else []
        for key in ("batch_size", "lr", "semantic", "prior", "bound"):
            command += [f"--{key.replace('_', '-')}", str(spec[key])] if key in spec else []
        command += ["--snapshots", ",".join(map(str, spec["snapshots"]))] if spec.get("snapshots") else []
        command += ["--data-dir", data_dir] if data_dir else []
        command += ["--resume"] if (g_dir / "checkpoint.pt").exists() else []
        if subprocess.run(command).returncode != 0:
            raise FastmbrError(f"training the learned model {name!r} failed: {' '.join(command)}")


def snapshots_ready(recipe: dict, runs: list[str], name: str, g_dir: Path) -> bool:
    """Whether the runs use only snapshots of G, all already written: they can start while G trains on."""
    from fastmbr.repro.gscore import has_snapshot

    uses_final = any(m == f"learned:{name}" and "snapshot" not in recipe["runs"][run]
                     for run in runs for m in recipe["runs"][run].get("model", []))
    wanted = snapshots_used(recipe, runs, name)
    return bool(wanted) and not uses_final and all(has_snapshot(g_dir, it) for it in wanted)


def score_learned_models(recipe: dict, root: Path, data_dir: str | None, device: str, runs: list[str],
                         full: bool) -> None:
    """Score each G (and each snapshot) the runs use, once: the report prints the score beside the rows."""
    from fastmbr.repro.gscore import check_snapshot, ensure_score
    from fastmbr.variation.munit.io import training_finished

    for name in sorted(learned_models_used(recipe, runs)):
        spec = learned_model_spec(recipe, name, full)
        g_dir = learned_model_dir(root, recipe, name, full)
        folders = [check_snapshot(g_dir, it) for it in sorted(snapshots_used(recipe, runs, name))]
        folders += [g_dir] if training_finished(g_dir) else []  # only snapshots are used while G trains on
        loaded: dict = {}
        for folder in folders:
            ensure_score(folder, spec["dataset"], spec["shift"], data_dir, device, root / "G" / "score_cache", loaded)


def check_learned_model(g_dir: Path, spec: dict, name: str) -> None:
    """A finished G folder must be the one the recipe describes: a recipe edited after its G was trained (more
    iterations, other classes) would otherwise reuse the old G silently."""
    from fastmbr.variation.munit.io import read_meta
    from fastmbr.variation.munit.train import PRESET_SCHEDULE

    meta = read_meta(g_dir)
    training = meta.get("training", {})
    size = spec.get("size", "tiny")
    wanted = {"dataset": spec["dataset"], "shift": spec["shift"].split(":")[0], "size": size,
              "iterations": spec.get("iters", PRESET_SCHEDULE.get(size, {}).get("iters")),
              "classes": spec.get("classes"), "image_size": spec.get("image_size"),
              "recon_x_cyc": float(spec.get("cycle", 0.0)), "semantic": float(spec.get("semantic", 0.0)),
              "batch_size": spec.get("batch_size"), "prior": spec.get("prior"), "bound": spec.get("bound")}
    found = {"dataset": training.get("dataset"), "shift": training.get("shift"), "size": meta.get("size"),
             "iterations": training.get("planned_iterations", training.get("iterations")),
             "classes": training.get("classes"), "image_size": meta.get("image_size"),
             "recon_x_cyc": training.get("recon_x_cyc", 0.0), "semantic": float(training.get("semantic", 0.0)),
             "batch_size": training.get("batch_size"), "prior": meta.get("prior"),
             "bound": (meta.get("delta_box") or [None, None])[1]}
    for key, value in wanted.items():
        if value is not None and found[key] is not None and str(found[key]) != str(value):
            raise FastmbrError(f"{g_dir} holds a G trained with {key} {found[key]}, but the recipe's learned model "
                               f"{name!r} asks for {value}: move that folder away to retrain it")


def evaluate_shifts(recipe: dict, run_dir: Path, data_dir: str | None, device: str) -> None:
    """Score a finished run on each of the recipe's ``eval_shifts`` (e.g. every severity), once each."""
    from fastmbr.engine.rundir import write_json
    from fastmbr.engine.run_eval import evaluate_run

    for shift in recipe.get("eval_shifts", []):
        path = run_dir / "eval" / f"{shift_key(shift)}.json"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            write_json(path, evaluate_run(run_dir, None, shift, data_dir, device))
