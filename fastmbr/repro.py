"""Paper experiments as recipes (experiments/*.yaml): run every algorithm × seed, then write results/NAME.md.

Runs go to ``runs/repro/NAME/<run>-s<seed>/``; a finished run (metrics.json present) is not run again, an
interrupted one resumes, so ``fastmbr repro NAME`` can be repeated until the table is complete. A run folder is
keyed by its resolved configuration: one trained with other settings than the recipe now gives is refused, never
reused, and the report leaves such folders out and says so (``recipe_check``). The report is
generated from those run folders alone: no number in ``results/*.md`` is typed by hand.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from fastmbr.config import MODEL_BASED, preset_config
from fastmbr.engine.rundir import git_sha, read_json
from fastmbr.errors import FastmbrError
from fastmbr.repro_gscore import snapshot_scores
from fastmbr.fileio import atomic_write
from fastmbr.recipe_check import drop_stale, load_yaml, run_folder, run_lock, stale_differences, validate_recipe
from fastmbr.repro_readings import paper_cell, paper_header, reading, row_label, variant_note  # noqa: F401 (reading)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def recipe_path(name: str) -> Path:
    path = Path(name) if name.endswith(".yaml") else EXPERIMENTS / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
        raise FastmbrError(f"unknown recipe {name!r}; known: {known}")
    return path


def load_recipe(name: str) -> dict:
    recipe = load_yaml(recipe_path(name))
    validate_recipe(recipe, recipe_path(name))
    recipe["name"] = recipe_path(name).stem
    recipe.setdefault("runs", {})
    if "sweep" in recipe:
        recipe["runs"].update(sweep_runs(recipe["sweep"]))
    return recipe


def sweep_runs(sweep: dict) -> dict[str, dict]:
    """``sweep: {param: k, values: [...], runs: {mrt: {...}}}`` → runs ``mrt-k1``, ``mrt-k5``, ... (a run may list
    its own ``values``)."""
    param = sweep["param"]
    runs = {}
    for name, spec in sweep["runs"].items():
        spec = dict(spec)
        for value in spec.pop("values", sweep["values"]):
            runs[f"{name}-{param}{value}"] = {**spec, param: value}
    return runs


def learned_model_spec(recipe: dict, name: str, full: bool) -> dict:
    """A ``learned_models`` entry with its own ``full:`` overrides applied under ``--full``."""
    spec = dict(recipe["learned_models"][name])
    overrides = spec.pop("full", {})
    return {**spec, **overrides} if full else spec


def learned_model_dir(root: Path, recipe: dict, name: str, full: bool) -> Path:
    """``root/G/NAME``; a G whose ``--full`` settings differ gets its own ``NAME-full`` folder."""
    differs = full and bool(recipe.get("learned_models", {}).get(name, {}).get("full"))
    return root / "G" / (f"{name}-full" if differs else name)


def learned_models_used(recipe: dict, runs: list[str]) -> set[str]:
    return {m[len("learned:"):].split("@")[0] for run in runs for m in recipe["runs"][run].get("model", [])
            if m.startswith("learned:")}


def snapshots_used(recipe: dict, runs: list[str], name: str) -> set[int]:
    """Iterations of the snapshots of learned model ``name`` that the runs train with."""
    used = set()
    for run in runs:
        spec = recipe["runs"][run]
        for m in spec.get("model", []):
            if m.startswith(f"learned:{name}@"):
                used.add(int(m.split("@")[1]))
            elif m == f"learned:{name}" and "snapshot" in spec:
                used.add(int(spec["snapshot"]))
    return used


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
    from fastmbr.repro_gscore import snapshot_dir

    uses_final = any(m == f"learned:{name}" and "snapshot" not in recipe["runs"][run]
                     for run in runs for m in recipe["runs"][run].get("model", []))
    wanted = snapshots_used(recipe, runs, name)
    return bool(wanted) and not uses_final and all((snapshot_dir(g_dir, it) / "G.json").is_file() for it in wanted)


def score_learned_models(recipe: dict, root: Path, data_dir: str | None, device: str, runs: list[str],
                         full: bool) -> None:
    """Score each G (and each snapshot) the runs use, once: the report prints the score beside the rows."""
    from fastmbr.repro_gscore import check_snapshot, ensure_score
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


def resolve_models(specs: list[str], root: Path, recipe: dict, full: bool) -> list[str]:
    """``learned:NAME`` → the recipe's G folder, ``learned:NAME@N`` → its snapshot at iteration N; other specs
    unchanged."""
    from fastmbr.repro_gscore import snapshot_dir

    resolved = []
    for s in specs:
        if not s.startswith("learned:"):
            resolved.append(s)
            continue
        name, _, iteration = s[len("learned:"):].partition("@")
        g_dir = learned_model_dir(root, recipe, name, full)
        resolved.append(str(snapshot_dir(g_dir, int(iteration)) if iteration else g_dir))
    return resolved


def run_config(recipe: dict, run: str, seed: int, full: bool, data_dir: str | None, device: str, root: Path):
    run_spec = dict(recipe["runs"][run])
    run_full = run_spec.pop("full", {})
    spec = {**recipe.get("settings", {}), **(recipe.get("full", {}) if full else {}), **run_spec,
            **(run_full if full else {})}
    cfg = preset_config(recipe["dataset"], spec["algo"], recipe.get("shift"))
    cfg.algo.k = spec.get("k", cfg.algo.k)
    cfg.algo.lam = spec.get("lambda", cfg.algo.lam)
    cfg.algo.alpha = spec.get("alpha", cfg.algo.alpha)
    for variant in ("select", "mat_init", "mat_step", "loss_reduction", "shared_delta"):  # docs/design.md
        setattr(cfg.algo, variant, spec.get(variant, getattr(cfg.algo, variant)))
    models = list(spec.get("model", cfg.algo.models))
    if "snapshot" in spec:  # a sweep over the iterations of one learned G (the paper's Figure 8)
        models = [f"{m}@{spec['snapshot']}" if m.startswith("learned:") and "@" not in m else m for m in models]
    cfg.algo.models = resolve_models(models, root.parent, recipe, full)
    cfg.optim.epochs = spec.get("epochs", cfg.optim.epochs)
    cfg.optim.warmup_epochs = spec.get("warmup_epochs", 0)
    cfg.optim.lr = spec.get("lr", cfg.optim.lr)
    cfg.optim.lr_end = spec.get("lr_end", cfg.optim.lr_end)
    cfg.data.image_size = spec.get("image_size", cfg.data.image_size)
    cfg.data.limit = spec.get("limit", cfg.data.limit)
    cfg.data.classes = spec.get("classes", cfg.data.classes)
    cfg.data.train_also = spec.get("train_also", cfg.data.train_also)
    cfg.data.augment = spec.get("augment", cfg.data.augment)
    cfg.arch = spec.get("arch", cfg.arch)
    cfg.data.data_dir, cfg.device, cfg.seed = data_dir, device, seed
    cfg.out = str(run_folder(root, run, seed))
    return cfg


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


def shared_note(recipe: dict, runs: dict) -> list[str]:
    """The report's line naming rows whose runs are another recipe's (``same_as``)."""
    shared = {run: spec["same_as"] for run, spec in recipe["runs"].items() if spec.get("same_as") and runs.get(run)}
    if not shared:
        return []
    return ["Runs shared with another recipe (same resolved configuration, checked; trained once): " +
            ", ".join(f"{run.upper()} = {other}" for run, other in shared.items()) + ".", ""]


LOCK = ".repro.lock"  # flock'ed by the process running the folder (recipe_check.run_lock)


def shift_key(shift: str) -> str:
    """File stem of a shift's evaluation in a run's eval/ (``corruption:snow-3`` → ``corruption_snow-3``)."""
    return shift.replace(":", "_")


def evaluate_shifts(recipe: dict, run_dir: Path, data_dir: str | None, device: str) -> None:
    """Score a finished run on each of the recipe's ``eval_shifts`` (e.g. every severity), once each."""
    from fastmbr.engine.rundir import write_json
    from fastmbr.engine.run_eval import evaluate_run

    for shift in recipe.get("eval_shifts", []):
        path = run_dir / "eval" / f"{shift_key(shift)}.json"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            write_json(path, evaluate_run(run_dir, None, shift, data_dir, device))


def collect(root: Path) -> dict[str, list[dict]]:
    """Run name → the metrics.json of each finished seed, with its shift evaluations under "eval"."""
    runs: dict[str, list[dict]] = {}
    for metrics_path in sorted(root.glob("*-s*/metrics.json")):
        run = metrics_path.parent.name.rsplit("-s", 1)[0]
        metrics = read_json(metrics_path)
        evals = sorted(metrics_path.parent.glob("eval/*.json"))
        metrics["eval"] = {p.stem: read_json(p) for p in evals}
        config = metrics_path.parent / "config.json"
        metrics["config"] = read_json(config) if config.exists() else {}
        runs.setdefault(run, []).append(metrics)
    return runs


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def write_report(name: str, root: Path, full: bool = False) -> Path:
    recipe = load_recipe(name)
    runs, stale = drop_stale(collect(root / recipe["name"]), lambda run, seed: run_config(
        recipe, run, seed, full, None, "cpu", root / recipe["name"]) if run in recipe["runs"] else None)
    if not runs:
        raise FastmbrError(f"no finished runs of {recipe['name']} under {root / recipe['name']}")
    every = [m for ms in runs.values() for m in ms]
    any_metrics = every[0]
    seconds = sum(m.get("train_seconds", 0.0) for m in every)
    data_dirs = sorted({m["config"].get("data", {}).get("data_dir") or "" for m in every} - {""})
    data_flag = f" --data-dir {data_dirs[0]}" if data_dirs else ""
    commits = sorted({m.get("commit") or "?" for m in every})
    lines = [
        f"# {recipe['title']}",
        "",
        f"- command: `fastmbr repro {recipe['name']}{' --full' if full else ''}{data_flag}` then "
        f"`fastmbr repro {recipe['name']} --report`",
        f"- runs trained at commit(s) {', '.join(commits)}; report generated at {git_sha()} on "
        f"{dt.date.today().isoformat()}; device: {any_metrics.get('device')}",
        f"- data: {any_metrics['dataset']} {any_metrics['shift']}; counts {json.dumps(any_metrics.get('counts', {}))}",
        f"- budget: {json.dumps(recipe.get('full' if full else 'settings', {}))}; training wall time "
        f"{seconds / 60:.1f} min in all; model selection on A's validation split",
        "",
        f"| algorithm | model of variation, k | seeds | A test top-1 | B test top-1 | B test top-5 | "
        f"{paper_header(recipe)} |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in recipe["runs"]:
        ms = runs.get(run, [])
        lines.append(
            f"| {row_label(recipe, run)} | {run_model(recipe, run, root, full)} | {len(ms)} | "
            f"{mean_sd([m['test']['A']['top1'] for m in ms])} | "
            f"{mean_sd([m['test']['B']['top1'] for m in ms])} | {mean_sd([m['test']['B']['top5'] for m in ms])} | "
            f"{paper_cell(recipe, run)} |"
        )
    lines += ["", reading(recipe, runs), ""] + shared_note(recipe, runs)
    if stale:
        lines += [f"Left out, trained with another configuration than this recipe's: {', '.join(stale)}.", ""]
    out = Path("results") / f"{recipe['name']}.md"
    out.parent.mkdir(exist_ok=True)
    if "sweep" in recipe:
        lines += sweep_section(recipe, runs, out.parent / recipe["name"], root, full)
    if "eval_shifts" in recipe:
        lines += matched_model_section(recipe, runs)
        lines += shift_curve_section(recipe, runs, out.parent / recipe["name"])
    text = "\n".join(lines)
    atomic_write(out, lambda f: f.write(text.encode()))
    return out


def run_model(recipe: dict, run: str, root: Path = Path("runs/repro"), full: bool = False) -> str:
    """What the run's algorithm used: its models of variation (a learned one with its score) and k."""
    from fastmbr.algorithms import build_algorithm

    cfg = run_config(recipe, run, 0, full, None, "cpu", root / recipe["name"])
    k = build_algorithm(cfg.algo.name, k=cfg.algo.k).k  # the algorithm's default when the recipe sets none
    if cfg.algo.name == "pgd":
        return f"x + δ, ℓ∞ ≤ 8/255, {k} steps"
    if cfg.algo.name in ("erm", "adda", "augmix"):
        return "–"
    models = [m if m.startswith("known:") else learned_name(Path(m)) for m in cfg.algo.models]
    return f"{' ∘ '.join(models)}, k={k}{variant_note(cfg.algo)}"


def learned_name(g_dir: Path) -> str:
    """``gtsrb-contrast (learned; tiny 4000 it × batch 16: content kept 85% ...)``: the G and its score."""
    from fastmbr.repro_gscore import read_score, summary

    snapshots = g_dir.parent.name == "snapshots"
    name = g_dir.parent.parent.name + f"@{int(g_dir.name.split('_')[1])}" if snapshots else g_dir.name
    try:
        scored = summary(read_score(g_dir)) if (g_dir / "G.json").is_file() else "not trained here"
    except FastmbrError:
        scored = "unreadable G.json"
    return f"{name} (learned; {scored})"


def sweep_points(recipe: dict, runs: dict[str, list[dict]]) -> dict[str, list[tuple[int, list[float]]]]:
    """Per swept algorithm: (value, B test top-1 of each seed) for every value that has finished runs."""
    sweep, points = recipe["sweep"], {}
    for name, spec in sweep["runs"].items():
        for value in spec.get("values", sweep["values"]):
            ms = runs.get(f"{name}-{sweep['param']}{value}", [])
            if ms:
                points.setdefault(name, []).append((value, [m["test"]["B"]["top1"] for m in ms]))
    return points


def sweep_section(recipe: dict, runs: dict[str, list[dict]], folder: Path, root: Path | None = None,
                  full: bool = False) -> list[str]:
    """A value × algorithm table of B top-1 (mean ± sd), and the same as CSV and a line plot in ``folder``."""
    param, points = recipe["sweep"]["param"], sweep_points(recipe, runs)
    values = sorted({v for series in points.values() for v, _ in series})
    if not values:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    csv = ["algorithm," + param + ",seeds,B_top1_mean,B_top1_sd"]
    table = {}
    for name, series in points.items():
        for value, accs in series:
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            csv.append(f"{name},{value},{len(accs)},{statistics.mean(accs):.2f},{sd:.2f}")
            table[name, value] = mean_sd(accs)
    kept, extra_rows = {}, []
    if param == "snapshot" and root is not None:
        g_dir = swept_g_dir(recipe, root, full)
        kept, extra_rows = snapshot_scores(g_dir, values, folder) if g_dir is not None else ({}, [])
    (folder / "sweep.csv").write_text("\n".join(csv) + "\n")
    erm = [m["test"]["B"]["top1"] for m in runs.get("erm", [])]
    plot_sweep(points, param, recipe.get("title", recipe["name"]), folder / "sweep.png", secondary=kept,
               baseline=statistics.mean(erm) if erm else None)
    lines = [f"B test top-1 against {param} ([CSV]({folder.name}/sweep.csv), [plot]({folder.name}/sweep.png)):", "",
             "| algorithm | " + " | ".join(f"{param}={v}" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for name in points:
        lines.append(f"| {name.upper()} | " + " | ".join(table.get((name, v), "–") for v in values) + " |")
    return lines + extra_rows + [""]


def swept_g_dir(recipe: dict, root: Path, full: bool) -> Path | None:
    """The one learned G whose snapshots a ``snapshot`` sweep trains with (None if not exactly one)."""
    names = sorted({m[len("learned:"):].split("@")[0] for spec in recipe["sweep"]["runs"].values()
                    for m in spec.get("model", []) if m.startswith("learned:")})
    return learned_model_dir(root, recipe, names[0], full) if len(names) == 1 else None


def shift_curve_section(recipe: dict, runs: dict[str, list[dict]], folder: Path) -> list[str]:
    """Top-1 on the shifted domain B of each ``eval_shifts`` entry (e.g. severities 1-5) per algorithm: one CSV,
    and a table and a line plot per family of shifts (``corruption:fog-1`` ... ``-5`` is one family)."""
    families = shift_families(recipe["eval_shifts"])
    csv, lines = ["algorithm,shift,seeds,B_top1_mean,B_top1_sd"], []
    for family, shifts in families.items():
        plot = "shifts.png" if len(families) == 1 else f"shifts-{shift_key(family)}.png"
        points = family_points(runs, shifts)
        if not points:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        xs = shift_axis(shifts)
        lines += [f"Domain-B top-1 on each evaluation shift{'' if len(families) == 1 else f' of `{family}`'} "
                  f"([CSV]({folder.name}/shifts.csv), [plot]({folder.name}/{plot})):", "",
                  "| algorithm | " + " | ".join(f"`{s}`" for s in shifts) + " |", "|---|" + "---|" * len(shifts)]
        shift_at = dict(zip(xs, shifts))
        for run, series in points.items():
            cells = {x: mean_sd(accs) for x, accs in series}
            lines.append(f"| {run.upper()} | " + " | ".join(cells.get(x, "–") for x in xs) + " |")
            for x, accs in series:
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                csv.append(f"{run},{shift_at[x]},{len(accs)},{statistics.mean(accs):.2f},{sd:.2f}")
        lines.append("")
        axis = recipe.get("eval_axis", "evaluation shift")
        title = recipe.get("title", recipe["name"]) if len(families) == 1 else family.split(":")[-1]
        plot_sweep(points, axis, title, folder / plot, log_x=False)
    if len(csv) > 1:
        (folder / "shifts.csv").write_text("\n".join(csv) + "\n")
    return lines


def shift_family(shift: str) -> str:
    """What precedes the trailing severity or level: ``corruption:fog-3`` → ``corruption:fog``."""
    return re.sub(r"-\d+$", "", shift)


def learned_family(recipe: dict, run: str) -> tuple[str, str] | None:
    """The shift family the run's one learned G was trained for (``mda-fog`` → ``corruption:fog``) and how that G
    was trained apart from its shift (data, classes, size, iterations) with the run's own λ and lr: runs of one
    kind form one row. None for runs without exactly one learned G."""
    models = recipe["runs"][run].get("model", [])
    if len(models) != 1 or not models[0].startswith("learned:"):
        return None
    spec = recipe["learned_models"][models[0][len("learned:"):]]
    kind = (f"{spec['dataset']} classes {spec.get('classes', 'all')}, {spec.get('size', 'tiny')}, "
            f"{spec.get('iters', 'preset')} it")
    own = {"λ" if key == "lambda" else key: recipe["runs"][run][key] for key in ("lambda", "lr")
           if key in recipe["runs"][run]}
    return shift_family(spec["shift"]), kind + "".join(f"; {key} = {value}" for key, value in own.items())


def family_means(ms: list[dict], shifts: list[str]) -> list[float]:
    """Each seed's B top-1 averaged over the family's shifts (seeds missing one of them are left out)."""
    keys = [shift_key(s) for s in shifts]
    return [statistics.mean(m["eval"][k]["B"]["top1"] for k in keys) for m in ms if all(k in m["eval"] for k in keys)]


def matched_model_section(recipe: dict, runs: dict[str, list[dict]]) -> list[str]:
    """The paper's Table 3 layout: one column per shift family (B top-1 averaged over its severities), baselines as
    rows, and per model-based algorithm one row that takes, in each column, the run whose G was learned for it."""
    families = shift_families(recipe["eval_shifts"])
    matched: dict[tuple[str, str], dict[str, str]] = {}
    for run in recipe["runs"]:
        found = learned_family(recipe, run) if run in runs else None
        if found and found[0] in families:
            matched.setdefault((recipe["runs"][run]["algo"], found[1]), {})[found[0]] = run
    if len(families) < 2 or not matched:
        return []
    kinds_of = Counter(algo for algo, _ in matched)
    model_rows = {f"{algo.upper()} (the column's G{'' if kinds_of[algo] == 1 else f': {kind}'})": cols
                  for (algo, kind), cols in matched.items()}
    rows = {run.upper(): {f: run for f in families} for run in recipe["runs"]
            if run in runs and recipe["runs"][run]["algo"] not in MODEL_BASED}
    rows.update(model_rows)
    cell = {(row, f): family_means(runs.get(cols.get(f, ""), []), families[f]) for row, cols in rows.items()
            for f in families}
    lines = ["Domain-B top-1 averaged over each corruption's severities (the paper's Table 3 layout; mean ± sd over "
             "seeds); a model-based row takes, in each column, the run whose G was learned for that column:", "",
             "| algorithm | " + " | ".join(f"`{f}`" for f in families) + " |", "|---|" + "---|" * len(families)]
    for row, cols in rows.items():
        named = row in model_rows  # say which run filled each cell
        lines.append(f"| {row} | " + " | ".join(
            f"{mean_sd(cell[row, f])} ({cols[f]})" if named and cell[row, f] else mean_sd(cell[row, f])
            for f in families) + " |")
    return lines + ["", matched_reading(list(model_rows), "ERM" in rows, cell, families), ""]


def matched_reading(model_rows: list[str], has_erm: bool, cell: dict, families: dict) -> str:
    """One generated sentence: in how many columns each matched-G row beats ERM, and by more than the spread."""
    if not has_erm or not model_rows:
        return "No ERM row or no matched model-based row yet."
    parts = []
    for row in model_rows:
        scored = [f for f in families if len(cell[row, f]) > 1 and len(cell["ERM", f]) > 1]
        gaps = {f: statistics.mean(cell[row, f]) - statistics.mean(cell["ERM", f]) for f in scored}
        clear = [f for f in scored
                 if gaps[f] > max(statistics.stdev(cell[row, f]), statistics.stdev(cell["ERM", f]))]
        parts.append(f"{row} is above ERM in {sum(g > 0 for g in gaps.values())} of {len(scored)} columns, by more "
                     f"than the spread over seeds in {len(clear)}"
                     + (f" ({', '.join(f.split(':')[-1] for f in clear)})" if clear else ""))
    return "; ".join(parts) + "."


def shift_families(shifts: list[str]) -> dict[str, list[str]]:
    """Evaluation shifts grouped by what precedes their trailing severity (``corruption:fog-3`` → ``corruption:fog``),
    in recipe order."""
    families: dict[str, list[str]] = {}
    for shift in shifts:
        families.setdefault(shift_family(shift), []).append(shift)
    return families


def family_points(runs: dict[str, list[dict]], shifts: list[str]) -> dict[str, list[tuple[int, list[float]]]]:
    """Run → [(x, B top-1 of every seed scored on that shift)] over one family's shifts."""
    points: dict[str, list[tuple[int, list[float]]]] = {}
    for run, ms in runs.items():
        for x, shift in zip(shift_axis(shifts), shifts):
            accs = [m["eval"][shift_key(shift)]["B"]["top1"] for m in ms if shift_key(shift) in m["eval"]]
            if accs:
                points.setdefault(run, []).append((x, accs))
    return points


def shift_axis(shifts: list[str]) -> list[int]:
    """Where each evaluation shift sits on the plot's x axis: its trailing severity or level (``snow-3`` → 3) when
    every shift has a distinct one, else its position 1, 2, ..."""
    levels = [int(m.group(1)) if (m := re.search(r"-(\d+)$", s)) else None for s in shifts]
    if None in levels or len(set(levels)) != len(levels):
        return list(range(1, len(shifts) + 1))
    return levels


def plot_sweep(points: dict[str, list[tuple[int, list[float]]]], param: str, title: str, path: Path,
               log_x: bool = True, baseline: float | None = None, secondary: dict | None = None) -> None:
    """Mean ± sd of each series against the swept value; ``baseline`` (ERM's mean) as a dashed line;
    ``secondary`` (value → G's content kept, %) on a right-hand axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    for name, series in points.items():
        xs = [v for v, _ in series]
        means = [statistics.mean(a) for _, a in series]
        sds = [statistics.stdev(a) if len(a) > 1 else 0.0 for _, a in series]
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=name.upper())
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="ERM")
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(sorted({v for series in points.values() for v, _ in series}))  # the measured values only
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(param)
    ax.set_ylabel("domain B test top-1 (%)")
    ax.set_title(textwrap.fill(title, 62), fontsize=8)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        right = ax.twinx()
        xs = sorted(secondary)
        line, = right.plot(xs, [secondary[x] for x in xs], color="tab:green", marker="s", linestyle=":",
                           label="G content kept")
        right.set_ylabel("G content kept (%)", color="tab:green")
        right.set_ylim(0, 100)
        handles, labels = handles + [line], labels + ["G content kept"]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
