"""Recipes over learned G's: snapshot sweeps (Figure 8), G scores beside the rows, runs shared between recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastmbr.repro.gscore import read_score, snapshot_dir, summary
from fastmbr.repro.recipe import learned_models_used, load_recipe, run_config, snapshots_used
from fastmbr.repro.report import shared_note
from fastmbr.repro.runner import link_shared_run, snapshots_ready

ROOT = Path("runs/repro")


def test_a_snapshot_sweep_trains_each_run_on_its_snapshot():
    f8 = load_recipe("f8_gtsrb_contrast")
    runs = [r for r in f8["runs"] if r.startswith("mrt-snapshot")]
    assert len(runs) >= 6 and learned_models_used(f8, runs) == {"gtsrb-contrast-sem"}
    cfg = run_config(f8, "mrt-snapshot500", 0, False, None, "cpu", ROOT / "f8_gtsrb_contrast")
    assert cfg.algo.models == [str(snapshot_dir(ROOT / "G" / "gtsrb-contrast-sem", 500))] and cfg.algo.k == 10
    assert snapshots_used(f8, runs, "gtsrb-contrast-sem") == set(f8["sweep"]["values"])
    assert set(f8["sweep"]["values"]) <= set(f8["learned_models"]["gtsrb-contrast-sem"]["snapshots"])


def test_runs_on_written_snapshots_may_start_while_g_trains_on(tmp_path):
    f8 = load_recipe("f8_gtsrb_contrast")
    g_dir = tmp_path / "G" / "gtsrb-contrast-sem"
    assert not snapshots_ready(f8, ["mrt-snapshot10"], "gtsrb-contrast-sem", g_dir)
    (snapshot_dir(g_dir, 10)).mkdir(parents=True)
    (snapshot_dir(g_dir, 10) / "G.json").write_text("{}")
    assert snapshots_ready(f8, ["mrt-snapshot10"], "gtsrb-contrast-sem", g_dir)
    assert not snapshots_ready(f8, ["mrt-snapshot10", "mrt-snapshot100"], "gtsrb-contrast-sem", g_dir)


def _finished(run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "options": {}}))
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"B": {"top1": 50.0}}}))


def test_a_shared_run_is_linked_only_when_its_configuration_is_the_same(tmp_path):
    t6, f8 = load_recipe("t6_gtsrb_contrast_sem"), load_recipe("f8_gtsrb_contrast")
    other = tmp_path / "f8_gtsrb_contrast" / "mrt-snapshot4000-s0"
    out = tmp_path / "t6_gtsrb_contrast_sem" / "mrt-sem-s0"
    mine = run_config(t6, "mrt-sem", 0, False, None, "cpu", out.parent)
    assert not link_shared_run(t6, "mrt-sem", 0, out, mine, None)  # the other run has not finished: train
    _finished(other, run_config(f8, "mrt-snapshot4000", 0, False, None, "cpu", other.parent))
    assert link_shared_run(t6, "mrt-sem", 0, out, mine, None)
    assert out.is_symlink() and out.resolve() == other.resolve() and (out / "metrics.json").is_file()
    assert "MRT-SEM = f8_gtsrb_contrast/mrt-snapshot4000" in " ".join(shared_note(t6, {"mrt-sem": [{}]}))
    # seed 1 of the other recipe was trained with another k: never linked
    other1 = tmp_path / "f8_gtsrb_contrast" / "mrt-snapshot4000-s1"
    changed = run_config(f8, "mrt-snapshot4000", 1, False, None, "cpu", other1.parent)
    changed.algo.k = 5
    _finished(other1, changed)
    out1 = tmp_path / "t6_gtsrb_contrast_sem" / "mrt-sem-s1"
    assert not link_shared_run(t6, "mrt-sem", 1, out1, run_config(t6, "mrt-sem", 1, False, None, "cpu",
                                                                   out1.parent), None)
    assert not out1.exists()


def test_a_score_belongs_to_the_weights_it_scored(tmp_path):
    from fastmbr.variation.munit import MunitVariation, arch_preset, save_variation

    g_dir = save_variation(MunitVariation(arch_preset("tiny"), 32).freeze(), tmp_path / "G", "tiny",
                           {"iterations": 5, "batch_size": 16, "semantic": 1.0})
    meta = json.loads((g_dir / "G.json").read_text())
    result = {"content_kept": 0.8, "content_kept_vs_identity": 0.9, "content_kept_worst_of_10": 0.5,
              "shift_achieved": 0.7, "g": {"preset": "tiny", "iterations": 5, "batch_size": 16, "semantic": 1.0}}
    (g_dir / "score.json").write_text(json.dumps({**result, "g_sha256": meta["sha256"]}))
    assert read_score(g_dir)["content_kept"] == 0.8
    text = summary(read_score(g_dir))
    assert "content kept 80% (0.90× identity" in text and "semantic 1" in text and "shift 70%" in text
    (g_dir / "score.json").write_text(json.dumps({**result, "g_sha256": "0" * 64}))
    assert read_score(g_dir) is None and summary(None) == "not scored"


def test_both_recipes_describe_the_shared_g_identically():
    a = load_recipe("t6_gtsrb_contrast_sem")["learned_models"]["gtsrb-contrast-sem"]
    b = load_recipe("f8_gtsrb_contrast")["learned_models"]["gtsrb-contrast-sem"]
    assert a == b


@pytest.mark.parametrize("name", ["f8_gtsrb_contrast", "t6_gtsrb_contrast_sem"])
def test_new_recipes_pass_the_recipe_checks(name):
    assert load_recipe(name)["name"] == name
