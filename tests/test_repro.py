"""Recipes: every one builds a valid config per run and seed; reports are generated from run folders alone."""

import json
import random
import statistics
from pathlib import Path

import pytest

from fastmbr.algorithms import build_algorithm
from fastmbr.errors import FastmbrError
from fastmbr.repro import EXPERIMENTS, load_recipe, run_config, write_report

RECIPES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("full", [False, True])
def test_every_recipe_run_builds_a_config_and_its_algorithm(name, full, tmp_path):
    recipe = load_recipe(name)
    assert recipe["runs"] and recipe["title"]
    for run in recipe["runs"]:
        cfg = run_config(recipe, run, seed=1, full=full, data_dir=None, device="cpu", root=tmp_path / name)
        assert cfg.seed == 1 and cfg.out.endswith(f"{run}-s1") and cfg.optim.epochs >= 1
        assert not any(m.startswith("learned:") for m in cfg.algo.models)
        build_algorithm(cfg.algo.name, k=cfg.algo.k, lam=cfg.algo.lam)


def test_recipes_that_name_one_learned_model_describe_it_identically():
    """G folders are shared by name (runs/repro/G/NAME): two recipes giving one name two specs would refuse each
    other's G (the t3 Imagenette recipe reuses the Tiny-ImageNet G's)."""
    seen: dict[str, tuple[str, dict]] = {}
    for name in RECIPES:
        for model, spec in load_recipe(name).get("learned_models", {}).items():
            first = seen.setdefault(model, (name, spec))
            assert first[1] == spec, f"{model}: {first[0]} and {name} describe it differently"
    assert "tiny-snow" in load_recipe("t3_imagenette_transfer")["learned_models"]


def test_full_settings_override_per_run_and_sweeps_expand():
    t6 = load_recipe("t6_gtsrb_brightness")
    assert run_config(t6, "pgd-10", 0, False, None, "cpu", EXPERIMENTS).algo.k == 10
    assert run_config(t6, "pgd-20", 0, False, None, "cpu", EXPERIMENTS).algo.k == 20  # Appendix A.1
    assert run_config(t6, "adda", 0, True, None, "cpu", EXPERIMENTS).optim.warmup_epochs == 10
    t7 = load_recipe("t7_gtsrb_k")
    assert {"mrt-k50", "mda-k20", "mat-k1", "erm"} <= set(t7["runs"]) and "mda-k50" in t7["runs"]
    assert run_config(t7, "mrt-k50", 0, False, None, "cpu", EXPERIMENTS).algo.k == 50


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(FastmbrError, match="unknown recipe 'nope'.*t5_usps"):
        load_recipe("nope")


def _fake_runs(root, recipe, seeds):
    rng, truth = random.Random(3), {}
    for run in recipe["runs"]:
        for seed in range(seeds):
            b = rng.uniform(10, 90)
            truth.setdefault(run, []).append(b)
            folder = root / recipe["name"] / f"{run}-s{seed}"
            folder.mkdir(parents=True)
            metrics = {"dataset": recipe["dataset"], "shift": recipe["shift"], "device": "cpu", "counts": {},
                       "train_seconds": 60.0,
                       "test": {"A": {"top1": b + 5, "top5": 99.0}, "B": {"top1": b, "top5": 98.0}}}
            (folder / "metrics.json").write_text(json.dumps(metrics))
    return truth


def test_report_tables_are_computed_from_the_run_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("t7_gtsrb_k")
    truth = _fake_runs(tmp_path / "runs", recipe, seeds=2)
    text = write_report("t7_gtsrb_k", tmp_path / "runs").read_text()
    for run, values in truth.items():
        expected = f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
        row = next(line for line in text.splitlines() if line.startswith(f"| {run.upper()} | "))
        assert "| 2 | " in row and expected in row, run
    csv = (tmp_path / "results" / "t7_gtsrb_k" / "sweep.csv").read_text().splitlines()
    row = next(line for line in csv if line.startswith("mrt,50,"))
    assert row.endswith(f"{statistics.mean(truth['mrt-k50']):.2f},{statistics.stdev(truth['mrt-k50']):.2f}")
    assert (tmp_path / "results" / "t7_gtsrb_k" / "sweep.png").stat().st_size > 1000


def test_only_names_unknown_runs_in_one_line(tmp_path):
    from fastmbr.repro import run_recipe

    with pytest.raises(FastmbrError, match="has no run adda.*erm, pgd"):
        run_recipe("t5_usps", 1, False, None, "cpu", tmp_path, only=["erm", "adda"])


def test_recipe_runs_then_scores_each_evaluation_shift_into_a_curve(tmp_path, monkeypatch):
    from fastmbr.repro import run_recipe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    recipe = tmp_path / "tiny_curve.yaml"
    recipe.write_text(
        'title: "curve"\ndataset: mnist\nshift: background-color\nseeds: 1\n'
        "settings: {epochs: 1, limit: 128}\n"
        "eval_shifts: [corruption:pixelate-1, corruption:pixelate-5]\n"
        "runs:\n  erm: {algo: erm}\n")
    text = run_recipe(str(recipe), None, False, None, "cpu", tmp_path / "runs").read_text()
    evals = sorted((tmp_path / "runs" / "tiny_curve" / "erm-s0" / "eval").glob("*.json"))
    assert [p.stem for p in evals] == ["corruption_pixelate-1", "corruption_pixelate-5"]
    b_top1 = [json.loads(p.read_text())["B"]["top1"] for p in evals]
    assert f"| ERM | {b_top1[0]:.1f} ± 0.0 | {b_top1[1]:.1f} ± 0.0 |" in text
    assert "| ERM | – | 1 | " in text
    assert (tmp_path / "results" / "tiny_curve" / "shifts.png").exists()


def test_reading_calls_gaps_within_seed_spread_and_skips_rows_with_fewer_seeds():
    from fastmbr.repro.readings import reading

    recipe = load_recipe("t5_usps")

    def runs(**b):
        return {run: [{"test": {"B": {"top1": v}}} for v in values] for run, values in b.items()}

    clear = reading(recipe, runs(erm=[80.0, 81.0, 82.0], mrt=[90.0, 91.0, 92.0], mda=[99.0]))
    assert "MRT vs ERM on B: +10.0" in clear and "3 vs 3 seeds" in clear and "agrees" in clear
    noisy = reading(recipe, runs(erm=[70.0, 80.0, 90.0], mrt=[72.0, 82.0, 92.0]))
    assert "within the spread" in noisy
    assert "does not reproduce" in reading(recipe, runs(erm=[80.0, 80.0], mrt=[70.0, 71.0]))
    assert "one seed" in reading(recipe, runs(erm=[80.0], mrt=[90.0]))


def test_evaluation_shifts_sit_at_their_severity_on_the_curve_axis():
    from fastmbr.repro.report import shift_axis

    assert shift_axis(["corruption:snow-1", "corruption:snow-3", "corruption:snow-5"]) == [1, 3, 5]
    assert shift_axis(["challenge:snow-3", "challenge:snow-4"]) == [3, 4]
    assert shift_axis(["corruption:snow-2", "corruption:fog-2"]) == [1, 2]  # repeated levels: positions
    assert shift_axis(["background-color:blue-red", "corruption:fog-2"]) == [1, 2]


def test_learned_model_full_settings_get_their_own_folder_and_command(tmp_path):
    from fastmbr.repro.recipe import learned_model_dir, learned_model_spec, run_config

    recipe = load_recipe("t3_tinyimagenet_snow")
    budget, full = (learned_model_spec(recipe, "tiny-snow", f) for f in (False, True))
    assert (budget["size"], full["size"]) == ("tiny", "base") and "full" not in budget and "full" not in full
    assert budget["iters"] < full["iters"]
    dirs = {f: learned_model_dir(tmp_path, recipe, "tiny-snow", f) for f in (False, True)}
    assert dirs[False] != dirs[True] and dirs[True].name == "tiny-snow-full"
    for f in (False, True):
        cfg = run_config(recipe, "mda", 0, f, None, "cpu", tmp_path / recipe["name"])
        assert cfg.algo.models == [str(dirs[f])]
    usps = load_recipe("t5_usps")  # no full: overrides → one G for both
    assert learned_model_dir(tmp_path, usps, "mnist-background", True) == learned_model_dir(
        tmp_path, usps, "mnist-background", False)


def test_a_finished_g_that_no_longer_matches_its_recipe_is_refused(tmp_path, monkeypatch):
    """Editing a recipe's learned model (more iterations) after its G was trained must not reuse the old G."""
    from fastmbr.repro.recipe import learned_model_dir
    from fastmbr.repro.runner import ensure_learned_models
    from fastmbr.variation.munit.io import FORMAT, META

    recipe = load_recipe("t3_tinyimagenet_snow")
    g_dir = learned_model_dir(tmp_path, recipe, "tiny-snow", False)
    g_dir.mkdir(parents=True)
    spec = recipe["learned_models"]["tiny-snow"]

    from fastmbr.variation.munit import MunitVariation, arch_preset, save_variation

    save_variation(MunitVariation(arch_preset("tiny"), spec["image_size"]), g_dir, "tiny")
    complete = json.loads((g_dir / META).read_text())  # G.json is read strictly: every key, no others

    def write_g(iterations, cycle=0.0):
        meta = {**complete, "format": FORMAT, "size": "tiny", "image_size": spec["image_size"],
                "training": {"dataset": spec["dataset"], "shift": "corruption", "classes": spec["classes"],
                             "iterations": iterations, "planned_iterations": iterations, "recon_x_cyc": cycle}}
        (g_dir / META).write_text(json.dumps(meta))

    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("a finished, matching G was retrained"))
    write_g(spec["iters"])
    ensure_learned_models(recipe, tmp_path, None, "cpu", runs=["mda"])
    write_g(spec["iters"] // 2)
    with pytest.raises(FastmbrError, match=f"iterations {spec['iters'] // 2}.*'tiny-snow' asks for {spec['iters']}"):
        ensure_learned_models(recipe, tmp_path, None, "cpu", runs=["mda"])
    write_g(spec["iters"], cycle=10.0)
    with pytest.raises(FastmbrError, match="recon_x_cyc 10.0.*asks for 0.0"):
        ensure_learned_models(recipe, tmp_path, None, "cpu", runs=["mda"])


def test_runs_held_by_another_live_process_are_skipped_and_dead_owners_lose_their_lock(tmp_path, monkeypatch):
    """Two `fastmbr repro` workers on one recipe: each run folder goes to one of them (an fcntl.flock on its lock
    file); a crashed worker's lock file, or an empty one, holds no lock and is taken over."""
    import fcntl
    import os
    import subprocess
    import sys

    from fastmbr.repro import runner

    recipe = tmp_path / "two_runs.yaml"
    recipe.write_text('title: "locks"\ndataset: mnist\nshift: background-color\nseeds: 1\n'
                      "runs:\n  erm: {algo: erm}\n  mda: {algo: mda, k: 3, model: [known:background-color]}\n"
                      "  mrt: {algo: mrt, k: 3, model: [known:background-color]}\n")
    trained = []
    monkeypatch.setattr("fastmbr.engine.trainer.train", lambda cfg, **kw: trained.append(Path(cfg.out).name))
    monkeypatch.setattr(runner, "write_report", lambda *a, **k: None)
    root = tmp_path / "runs"
    for run in ("erm", "mda", "mrt"):
        (root / "two_runs" / f"{run}-s0").mkdir(parents=True)
    holder = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
              "time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", holder, str(root / "two_runs" / "erm-s0" / runner.LOCK)],
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "locked"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / "two_runs" / "mda-s0" / runner.LOCK).write_text(dead.stdout.strip())
    (root / "two_runs" / "mrt-s0" / runner.LOCK).write_text("")  # a lock file whose writer has not written yet
    try:
        runner.run_recipe(str(recipe), None, False, None, "cpu", root)
    finally:
        other.kill()
        other.wait()
    assert trained == ["mda-s0", "mrt-s0"]  # erm-s0 is locked by the live process; the others hold no lock
    fd = os.open(root / "two_runs" / "mda-s0" / runner.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released after the run
    os.close(fd)


def test_each_family_of_evaluation_shifts_gets_its_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("t3_tinyimagenet_snow")
    families = {}
    for shift in recipe["eval_shifts"]:
        families.setdefault(shift.rsplit("-", 1)[0], []).append(shift)
    assert len(families) == 5 and all(len(s) == 5 for s in families.values())
    _fake_runs(tmp_path / "runs", recipe, seeds=2)
    rng, fog3 = random.Random(4), {}
    for folder in sorted((tmp_path / "runs" / recipe["name"]).iterdir()):
        (folder / "eval").mkdir()
        for shift in recipe["eval_shifts"]:
            top1 = rng.uniform(1, 60)
            if shift == "corruption:fog-3":
                fog3.setdefault(folder.name.rsplit("-s", 1)[0], []).append(top1)
            (folder / "eval" / f"{shift.replace(':', '_')}.json").write_text(json.dumps({"B": {"top1": top1}}))
    text = write_report(recipe["name"], tmp_path / "runs").read_text()
    out = tmp_path / "results" / recipe["name"]
    for family in families:
        assert f"evaluation shift of `{family}`" in text
        assert (out / f"shifts-{family.replace(':', '_')}.png").stat().st_size > 1000
    fog_table = text.split("of `corruption:fog`")[1].split("\n\n")[1]
    mda = next(line for line in fog_table.splitlines() if line.startswith("| MDA |"))
    assert mda.split(" | ")[3] == f"{statistics.mean(fog3['mda']):.1f} ± {statistics.stdev(fog3['mda']):.1f}"
    assert len((out / "shifts.csv").read_text().splitlines()) == 1 + len(recipe["runs"]) * 25


def test_table_3_layout_takes_each_column_from_the_run_whose_g_was_learned_for_it():
    from fastmbr.repro.recipe import shift_key
    from fastmbr.repro.report import matched_model_section

    recipe = load_recipe("t3_tinyimagenet_snow")
    rng = random.Random(5)
    offset = {"erm": 0.0, "augmix": -1.0, "mda": 3.0, "mda-fog": 20.0, "mda-frost": -4.0}
    runs, truth = {}, {}
    for run, bump in offset.items():
        for seed in range(3):
            evals = {}
            for shift in recipe["eval_shifts"]:
                family, severity = shift.rsplit("-", 1)
                top1 = 30.0 - 2 * int(severity) + bump + rng.uniform(-0.5, 0.5)
                evals[shift_key(shift)] = {"B": {"top1": top1}}
                truth.setdefault((run, family), [[], [], []])[seed].append(top1)
            runs.setdefault(run, []).append({"eval": evals})
    lines = matched_model_section(recipe, runs)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert list(rows) == ["algorithm", "ERM", "AUGMIX", "MDA (the column's G)"]

    def cell(run, family):
        means = [statistics.mean(v) for v in truth[run, family]]
        return f"{statistics.mean(means):.1f} ± {statistics.stdev(means):.1f}"

    matched = rows["MDA (the column's G)"].split(" | ")[1:]
    assert matched[0] == f"{cell('mda', 'corruption:snow')} (mda)"
    assert matched[1] == f"{cell('mda-fog', 'corruption:fog')} (mda-fog)"
    assert matched[2] == f"{cell('mda-frost', 'corruption:frost')} (mda-frost)"
    assert matched[3].strip(" |") == "–"  # no mda-brightness run has finished
    assert rows["ERM"].split(" | ")[2] == cell("erm", "corruption:fog")
    assert "above ERM in 2 of 3 columns, by more than the spread over seeds in 2 (snow, fog)" in lines[-2]


def test_table_3_layout_gives_each_kind_of_g_its_own_row():
    from fastmbr.repro.recipe import shift_key
    from fastmbr.repro.report import matched_model_section

    recipe = load_recipe("t3_imagenette_transfer")
    evals = {shift_key(s): {"B": {"top1": 10.0}} for s in recipe["eval_shifts"]}
    names = ("erm", "mda", "mda-fog", "mda-g200", "mda-g200-l3", "mda-g200-lr")
    runs = {run: [{"eval": evals}] * 2 for run in names}
    rows = [line.split(" | ")[0].lstrip("| ") for line in matched_model_section(recipe, runs) if line.startswith("| M")]
    assert rows == ["MDA (the column's G: tiny-imagenet classes 0-9, tiny, 2000 it)",
                    "MDA (the column's G: tiny-imagenet classes all, tiny, 4000 it)",
                    "MDA (the column's G: tiny-imagenet classes all, tiny, 4000 it; λ = 3.0)",
                    "MDA (the column's G: tiny-imagenet classes all, tiny, 4000 it; lr = 0.0125)"]


def test_table_3_layout_gives_an_algorithm_variant_its_own_row():
    """Two runs on one G that differ by a variant (MDA-3's loss reduction) are two rows, never one cell picking
    either run."""
    from fastmbr.repro.recipe import shift_key
    from fastmbr.repro.report import matched_model_section

    recipe = load_recipe("t3_imagenette_variants")
    runs = {}
    for run, top1 in (("erm", 30.0), ("mda", 26.0), ("mda-mean", 22.0)):
        evals = {shift_key(s): {"B": {"top1": top1}} for s in recipe["eval_shifts"]}
        runs[run] = [{"eval": evals}] * 2
    lines = [line for line in matched_model_section(recipe, runs) if line.startswith("| M")]
    assert len(lines) == 2
    assert lines[0].startswith("| MDA (the column's G: tiny-imagenet classes 0-9, tiny, 2000 it) | 26.0 ± 0.0 (mda)")
    assert lines[1].startswith("| MDA (the column's G: tiny-imagenet classes 0-9, tiny, 2000 it; loss_reduction = mean)"
                               " | 22.0 ± 0.0 (mda-mean)")
