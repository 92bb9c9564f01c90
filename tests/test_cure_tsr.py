"""CURE-TSR challenge levels as a shift (Table 2): domains by type and level, pools and splits keyed by frame.

The trees are generated: random BMPs whose names follow the release, ``<seq>_<sign>_<type>_<level>_<index>.bmp``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastmbr.errors import FastmbrError
from fastmbr.pipelines.datasets import deterministic_split, frame_split, load_domains, unlabeled_pools
from fastmbr.pipelines.readers import cure_tsr
from fastmbr.pipelines.readers.cure_tsr import CHALLENGE_TYPES
from fastmbr.pipelines.shifts import parse_shift, split_domains
from fastmbr.pipelines.types import LabeledImages

from test_readers import write_cure  # noqa: E402

SNOW, HAZE = CHALLENGE_TYPES.index("snow"), CHALLENGE_TYPES.index("haze")
RENDERINGS = [(0, 0), *[(SNOW, level) for level in range(1, 6)], (HAZE, 2), (HAZE, 4)]
# (sequence, sign, index): sequences 01 and 02 share signs and indices, so a key without the sequence would merge
TRAIN_FRAMES = [(seq, sign, index) for seq in (1, 2) for sign in (1, 2, 3) for index in (1, 2, 3, 4)]
TEST_FRAMES = [(1, sign, index) for sign in (1, 2, 3) for index in (5, 6, 7)]
UNSNOWED = (2, 3, 4)  # one training frame has no snow renderings, so B's frames are fewer than A's


def cure_files(frames: list[tuple[int, int, int]]) -> dict[str, tuple]:
    """The release's layout for these frames at every rendering (the UNSNOWED frame skips snow)."""
    files = {}
    for seq, sign, index in frames:
        for kind, level in RENDERINGS:
            if kind == SNOW and (seq, sign, index) == UNSNOWED:
                continue
            folder = "ChallengeFree" if kind == 0 else f"{CHALLENGE_TYPES[kind].title()}-{level}"
            name = f"{seq:02d}_{sign:02d}_{kind:02d}_{level:02d}_{index:04d}.bmp"
            files[f"{folder}/{name}"] = (sign - 1, kind, level, (9, 7))
    return files


TRAIN_FILES, TEST_FILES = cure_files(TRAIN_FRAMES), cure_files(TEST_FRAMES)


def in_reader_order(files: dict[str, tuple]) -> list[tuple[str, tuple]]:
    return sorted(files.items(), key=lambda kv: Path(kv[0]).name)


def frame_key(path: str) -> tuple[int, int, int]:
    seq, sign, _, _, index = Path(path).stem.split("_")
    return int(seq), int(sign), int(index)


def expected(files: dict[str, tuple], kind: int, level: int) -> list[tuple[str, tuple]]:
    return [(p, v) for p, v in in_reader_order(files) if (v[1], v[2]) == (kind, level)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data root holding ``cure-tsr/Real_Train`` and ``cure-tsr/Real_Test``."""
    root = tmp_path_factory.mktemp("data")
    write_cure(root / "cure-tsr", "Real_Train", TRAIN_FILES)
    write_cure(root / "cure-tsr", "Real_Test", TEST_FILES)
    return root


def test_frame_ids_follow_sequence_sign_and_index(data_dir):
    data = cure_tsr.read(data_dir / "cure-tsr", "train")
    keys = [frame_key(p) for p, _ in in_reader_order(TRAIN_FILES)]
    pairs = set(zip(keys, data.frames.tolist()))
    assert len(pairs) == len(set(keys)) == len(set(data.frames.tolist())) == len(TRAIN_FRAMES)
    part = data.subset(torch.tensor([5, 0]))
    assert part.frames.tolist() == [data.frames[5], data.frames[0]]


@pytest.mark.parametrize("spec,kind,level", [("snow-2", SNOW, 2), ("snow-5", SNOW, 5), ("haze-4", HAZE, 4)])
def test_challenge_shift_takes_free_images_as_a_and_one_type_at_one_level_as_b(data_dir, spec, kind, level):
    data = cure_tsr.read(data_dir / "cure-tsr", "train")
    out = split_domains(data, parse_shift(f"challenge:{spec}"), "cure-tsr", seed=0)
    for role, (want_kind, want_level) in (("A", (0, 0)), ("B", (kind, level))):
        want = expected(TRAIN_FILES, want_kind, want_level)
        assert want and out[role].labels.tolist() == [v[0] for _, v in want]
        assert set(out[role].challenge_types.tolist()) == {want_kind}
        assert set(out[role].challenge_levels.tolist()) == {want_level}
    assert set(out["B"].frames.tolist()) <= set(out["A"].frames.tolist())


def test_g_pools_come_from_disjoint_frames(data_dir):
    d = load_domains("cure-tsr", "challenge:snow-2", data_dir)
    pool_a, pool_b = set(d.unlabeled["A"].frames.tolist()), set(d.unlabeled["B"].frames.tolist())
    assert pool_a and pool_b and not pool_a & pool_b
    whole = split_domains(cure_tsr.read(data_dir / "cure-tsr", "train"), d.shift, "cure-tsr", seed=0)
    assert pool_a | pool_b == set(whole["A"].frames.tolist()) | set(whole["B"].frames.tolist())
    assert set(d.unlabeled["B"].challenge_levels.tolist()) == {2}
    assert any("disjoint halves of the training frames" in note for note in d.notes)


@pytest.mark.parametrize("shift", ["none", "challenge:snow-2"])
def test_validation_split_shares_no_frame_with_training(data_dir, shift):
    d = load_domains("cure-tsr", shift, data_dir, val_fraction=0.25)
    train, val = set(d.train.frames.tolist()), set(d.val.frames.tolist())
    assert train and val and not train & val
    free_or_all = len(TRAIN_FILES) if shift == "none" else len(TRAIN_FRAMES)
    assert len(d.train) + len(d.val) == free_or_all


def test_train_also_adds_the_labelled_level_2_renderings_of_the_training_frames_only(data_dir):
    """ERM+Aug (Table 2): level-0 training images plus the level-2 renderings of those frames, labelled; the
    validation split and its frames stay challenge-free and unseen."""
    plain = load_domains("cure-tsr", "challenge:snow-5", data_dir, val_fraction=0.25)
    aug = load_domains("cure-tsr", "challenge:snow-5", data_dir, val_fraction=0.25, train_also="challenge:snow-2")
    n_a = len(plain.train)
    assert torch.equal(aug.train.images[:n_a], plain.train.images) and torch.equal(aug.val.images, plain.val.images)
    level2 = split_domains(cure_tsr.read(data_dir / "cure-tsr", "train"), parse_shift("challenge:snow-2"),
                           "cure-tsr", seed=0)["B"]
    train_frames = set(plain.train.frames.tolist())
    want = level2.subset(torch.tensor([i for i, f in enumerate(level2.frames.tolist()) if f in train_frames]))
    assert 0 < len(want) < len(level2)  # some level-2 frames belong to the validation split
    assert torch.equal(aug.train.images[n_a:], want.images) and torch.equal(aug.train.labels[n_a:], want.labels)
    assert not set(aug.train.frames[n_a:].tolist()) & set(aug.val.frames.tolist())
    assert aug.counts()["train"]["A"] == n_a and aug.counts()["train"]["labelled snow-2"] == len(want)
    assert any("--train-also challenge:snow-2" in note and "validation stays on A" in note for note in aug.notes)


@pytest.mark.parametrize("train_also,match", [("challenge:rain-3", "no rain images at level 3"),
                                               ("brightness", "has no shift 'brightness'"),
                                               ("weather:snow", "unknown shift 'weather:snow'")])
def test_train_also_with_a_missing_domain_or_foreign_shift_is_a_named_error(data_dir, train_also, match):
    with pytest.raises(FastmbrError, match=match):
        load_domains("cure-tsr", "challenge:snow-5", data_dir, train_also=train_also)


def test_frame_split_and_pools_of_unpaired_data_keep_the_positional_splits():
    """Datasets without frame ids split exactly as before: by position, A[i] paired with B[i]."""
    n = 50
    data = LabeledImages(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n) % 3, list("abc"))
    for got, want in zip(frame_split(data, 0.2, 5), deterministic_split(n, 0.2, 5)):
        assert torch.equal(got, want)
    pools = unlabeled_pools({"A": data, "B": data}, parse_shift("background-color"), 9, [])
    half_a, half_b = deterministic_split(n, 0.5, 9)
    assert torch.equal(pools["A"].images.flatten(), half_a.to(torch.uint8))
    assert torch.equal(pools["B"].images.flatten(), half_b.to(torch.uint8))


def test_another_level_keeps_the_classifier_data_and_tests_on_that_level(data_dir):
    level2 = load_domains("cure-tsr", "challenge:snow-2", data_dir)
    level4 = load_domains("cure-tsr", "challenge:snow-4", data_dir)
    assert torch.equal(level2.train.images, level4.train.images) and torch.equal(level2.val.labels, level4.val.labels)
    assert torch.equal(level2.test["A"].images, level4.test["A"].images)
    want = expected(TEST_FILES, SNOW, 4)
    assert level4.test["B"].labels.tolist() == [v[0] for _, v in want]
    assert set(level4.test["B"].challenge_levels.tolist()) == {4}


def test_registry_finds_the_data_through_fastmbr_data_and_defaults_to_snow_2(data_dir, monkeypatch):
    monkeypatch.setenv("FASTMBR_DATA", str(data_dir))
    d = load_domains("cure-tsr")
    assert (d.shift.kind, d.shift.a, d.shift.b) == ("challenge", "challenge-free", "snow-2")
    assert len(d.test["B"]) == len(expected(TEST_FILES, SNOW, 2))
    direct = load_domains("cure-tsr", "challenge:haze-2", data_dir / "cure-tsr")
    assert len(direct.test["B"]) == len(expected(TEST_FILES, HAZE, 2))


@pytest.mark.parametrize("spec", ["challenge:snow-6", "challenge:snow-0", "challenge:blizzard-2",
                                  "challenge:none-1", "challenge:snow", "challenge:snow-two"])
def test_bad_specs_are_one_line_errors_naming_the_value_and_the_choices(spec):
    with pytest.raises(FastmbrError) as err:
        parse_shift(spec)
    message = str(err.value)
    assert "\n" not in message and repr(spec) in message
    assert "LEVEL 1-5" in message and all(name in message for name in ("snow", "haze", "rain", "lens_blur"))


def test_missing_levels_other_datasets_and_other_images_are_named(data_dir):
    with pytest.raises(FastmbrError, match="no rain images at level 3 .*no rain images"):
        load_domains("cure-tsr", "challenge:rain-3", data_dir)
    with pytest.raises(FastmbrError, match=r"haze at level\(s\) 2, 4 only"):
        load_domains("cure-tsr", "challenge:haze-3", data_dir)
    with pytest.raises(FastmbrError, match="has no shift 'challenge'"):
        load_domains("gtsrb", "challenge:snow-2", data_dir)
    plain = LabeledImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"], "x")
    with pytest.raises(FastmbrError, match="CURE-TSR only"):
        split_domains(plain, parse_shift("challenge:snow-2"), "gtsrb", seed=0)


def test_datasets_show_counts_the_domains_and_rejects_a_bad_level(data_dir, capsys):
    from fastmbr.cli import main

    main(["datasets", "show", "cure-tsr", "--shift", "challenge:snow-2", "--json", "--data-dir", str(data_dir)])
    counts = json.loads(capsys.readouterr().out)
    assert counts["test"] == {"A": len(TEST_FRAMES), "B": len(expected(TEST_FILES, SNOW, 2))}
    assert counts["train"]["A"] + counts["val"]["A"] == len(TRAIN_FRAMES)
    with pytest.raises(SystemExit) as exit_:
        main(["datasets", "show", "cure-tsr", "--shift", "challenge:snow-9", "--data-dir", str(data_dir)])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "challenge:snow-9" in error and error.count("\n") == 1


def test_recipe_trains_on_level_0_and_scores_each_eval_level_then_eval_takes_another(data_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    from fastmbr.cli import main
    from fastmbr.repro import run_recipe

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny_cure.yaml"
    recipe.write_text('title: "cure"\ndataset: cure-tsr\nshift: challenge:snow-2\nseeds: 1\n'
                      "settings: {epochs: 1}\neval_shifts: [challenge:snow-3, challenge:snow-5]\n"
                      "reference: erm-aug\n"
                      'runs:\n  erm: {algo: erm}\n  erm-aug: {algo: erm, train_also: "challenge:snow-1"}\n')
    text = run_recipe(str(recipe), None, False, str(data_dir), "cpu", tmp_path / "runs").read_text()
    run_dir = tmp_path / "runs" / "tiny_cure" / "erm-s0"
    for level in (3, 5):
        scores = json.loads((run_dir / "eval" / f"challenge_snow-{level}.json").read_text())
        assert scores["B"]["n"] == len(expected(TEST_FILES, SNOW, level)) and scores["A"]["n"] == len(TEST_FRAMES)
    assert "`challenge:snow-3`" in text and "`challenge:snow-5`" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["counts"]["train"]["A"] + metrics["counts"]["val"]["A"] == len(TRAIN_FRAMES)
    aug = json.loads((tmp_path / "runs" / "tiny_cure" / "erm-aug-s0" / "metrics.json").read_text())["counts"]
    assert aug["train"]["A"] == metrics["counts"]["train"]["A"] and aug["train"]["labelled snow-1"] > 0
    assert "| ERM-AUG |" in text and "ERM-AUG has not run" not in text
    capsys.readouterr()
    main(["eval", str(run_dir), "--shift", "challenge:haze-4", "--device", "cpu", "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["B"]["n"] == len(expected(TEST_FILES, HAZE, 4))


def test_skip_corrupt_leaves_a_bad_test_image_out_of_domain_b_and_lists_it(tmp_path):
    write_cure(tmp_path / "cure-tsr", "Real_Train", TRAIN_FILES)
    write_cure(tmp_path / "cure-tsr", "Real_Test", TEST_FILES)
    bad_name, _ = expected(TEST_FILES, SNOW, 2)[0]
    bad = tmp_path / "cure-tsr" / "Real_Test" / bad_name
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(FastmbrError, match=str(bad)):
        load_domains("cure-tsr", "challenge:snow-2", tmp_path)
    d = load_domains("cure-tsr", "challenge:snow-2", tmp_path, skip_corrupt=True)
    assert d.unreadable == [str(bad)] and any(str(bad) in note for note in d.notes)
    assert len(d.test["B"]) == len(expected(TEST_FILES, SNOW, 2)) - 1
    assert len(d.test["A"]) == len(expected(TEST_FILES, 0, 0))
