"""A recipe's report (results/NAME.md) from its run folders alone: the table, sweeps and evaluation-shift curves."""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
from collections import Counter
from pathlib import Path

from fastmbr.config import MODEL_BASED
from fastmbr.engine.rundir import git_sha, read_json
from fastmbr.errors import FastmbrError
from fastmbr.fileio import atomic_write
from fastmbr.repro.check import drop_stale
from fastmbr.repro.gscore import snapshot_scores
from fastmbr.repro.plots import plot_sweep
from fastmbr.repro.readings import paper_cell, paper_header, reading, row_label, variant_note
from fastmbr.repro.recipe import learned_model_dir, load_recipe, run_config, shift_key


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


def shared_note(recipe: dict, runs: dict) -> list[str]:
    """The report's line naming rows whose runs are another recipe's (``same_as``)."""
    shared = {run: spec["same_as"] for run, spec in recipe["runs"].items() if spec.get("same_as") and runs.get(run)}
    if not shared:
        return []
    return ["Runs shared with another recipe (same resolved configuration, checked; trained once): " +
            ", ".join(f"{run.upper()} = {other}" for run, other in shared.items()) + ".", ""]


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
    from fastmbr.repro.gscore import read_score, summary

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


# Run keys that make a run's matched-G row its own: λ, lr and the algorithm variants (docs/design.md).
OWN_ROW_KEYS = ("lambda", "lr", "select", "mat_init", "mat_step", "loss_reduction", "shared_delta")


def learned_family(recipe: dict, run: str) -> tuple[str, str] | None:
    """The shift family the run's one learned G was trained for (``mda-fog`` → ``corruption:fog``) and how that G
    was trained apart from its shift (data, classes, size, iterations) with the run's own λ, lr and variant: runs of
    one kind form one row. None for runs without exactly one learned G."""
    models = recipe["runs"][run].get("model", [])
    if len(models) != 1 or not models[0].startswith("learned:"):
        return None
    spec = recipe["learned_models"][models[0][len("learned:"):]]
    kind = (f"{spec['dataset']} classes {spec.get('classes', 'all')}, {spec.get('size', 'tiny')}, "
            f"{spec.get('iters', 'preset')} it")
    own = {"λ" if key == "lambda" else key: recipe["runs"][run][key] for key in OWN_ROW_KEYS
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
