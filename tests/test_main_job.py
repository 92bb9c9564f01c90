"""The main job (`fastmbr run`): a background-colour pair with no shortcut channel, its table, reading and samples."""

import numpy
import pytest
import torch
from PIL import Image

from fastmbr.cli import main
from fastmbr.engine.logging import GRID_IMAGES
from fastmbr.engine.main_job import MAIN_SHIFT, PAPER_SHIFT, SAMPLES_PNG, reading
from fastmbr.pipelines.datasets import dataset_info
from fastmbr.pipelines.shifts import COLOUR_RANGES, parse_shift


def digit_channels(colour: str) -> set[int]:
    """Channels in which a white digit stands out: those the background leaves dark."""
    return {c for c, (low, high) in enumerate(COLOUR_RANGES[colour]) if high <= 0.2}


def test_main_shift_leaves_no_channel_where_the_digit_shows_on_both_backgrounds():
    main, paper = parse_shift(MAIN_SHIFT), parse_shift(PAPER_SHIFT)
    assert (main.a, main.b) == ("blue", "yellow") and (paper.a, paper.b) == ("blue", "red")
    assert digit_channels(main.a) & digit_channels(main.b) == set()
    assert digit_channels(paper.a) & digit_channels(paper.b) == {1}  # green: ERM's shortcut from blue to red


def test_reading_says_who_is_ahead_on_b_and_by_how_much():
    rows = [{"algorithm": "ERM", "test": {"A": {"top1": 96.0}, "B": {"top1": 88.0}}},
            {"algorithm": "MRT-10", "test": {"A": {"top1": 96.5}, "B": {"top1": 95.5}}}]
    line = reading(rows)
    assert "ERM loses 8.0 points from A to B" in line and "ahead of ERM on B by +7.5 points" in line
    rows[1]["test"]["B"]["top1"] = 87.0
    assert "not ahead of ERM on B by -1.0 points" in reading(rows)


def test_cli_main_job_prints_the_table_the_reading_and_writes_the_sample_grid(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "main"
    main(["run", "--epochs", "1", "--limit", "96", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "ERM" in printed and "MRT-10" in printed and "blue→yellow" in printed
    assert "Both saw only domain A in training" in printed
    assert (out / "erm" / "metrics.json").exists() and (out / "mrt" / "metrics.json").exists()
    grid = Image.open(out / "mrt" / SAMPLES_PNG).convert("RGB")
    cell = dataset_info("mnist").image_size + 2  # digits as prepared, with make_grid's 2-pixel padding
    assert grid.size == (GRID_IMAGES * cell + 2, 4 * cell + 2)  # rows: A, B, then G(x, δ) twice
    pixels = torch.from_numpy(numpy.asarray(grid)).float()  # [H, W, 3]
    row_a, row_b = pixels[2:cell], pixels[cell + 2:2 * cell]
    assert row_a[..., 2].mean() > row_a[..., 0].mean() + 50  # blue backgrounds
    assert row_b[..., 0].mean() > row_b[..., 2].mean() + 50 and row_b[..., 1].mean() > row_b[..., 2].mean() + 50
    main(["run", "--epochs", "1", "--limit", "96", "--device", "cpu", "--out", str(out)])  # never overwrites
    assert (out / "erm-2" / "metrics.json").exists() and (out / "mrt-2" / SAMPLES_PNG).exists()


@pytest.mark.parametrize("shift", ["background-color:blue-purple", "brightness"])
def test_main_job_with_a_shift_it_cannot_paint_is_one_error_line(shift, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--shift", shift, "--epochs", "1", "--limit", "96", "--device", "cpu", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not tmp_path.joinpath("erm").exists()
