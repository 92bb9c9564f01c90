"""The report's readings compare like with like: the paper's rows first, ours apart, after-B rows flagged."""

from fastmbr.config import AlgoConfig
from fastmbr.repro import load_recipe
from fastmbr.repro.readings import (extra_rows, paper_cell, paper_header, paper_rows, reading, row_label,
                                    variant_note)


def runs(**b):
    return {run.replace("_", "-"): [{"test": {"B": {"top1": v}}} for v in values] for run, values in b.items()}


def test_the_paper_rows_are_compared_with_erm_first_and_a_better_extra_row_does_not_stand_in():
    t6 = load_recipe("t6_gtsrb_brightness")
    assert paper_rows(t6) == ["mrt", "mda", "mat", "mrt-batch", "mat-paper"]
    assert "mrt-known" in extra_rows(t6, {}) and "pgd-20" not in extra_rows(t6, {})
    text = reading(t6, runs(erm=[40.0, 41.0, 42.0], mrt=[40.5, 41.5, 42.5], mda=[39.0, 40.0, 41.0],
                            mrt_known=[90.0, 91.0, 92.0]))
    paper_part, ours = text.split("\n\n")
    assert paper_part.startswith("The paper's rows")
    assert "MRT vs ERM on B: +0.5 points (paper: +10.1)" in paper_part and "within the spread" in paper_part
    assert "MDA vs ERM on B: -1.0 points (paper: +8.0)" in paper_part and "does not reproduce" in paper_part
    assert "agrees" not in paper_part  # the known-model row's +50 is not the paper's MRT
    assert ours.startswith("Ours, rows the paper does not have") and "MRT-KNOWN vs ERM on B: +50.0" in ours
    assert "(paper:" not in ours


def test_a_clear_gain_of_a_paper_row_agrees_and_after_b_rows_are_flagged_and_kept_apart():
    t3 = load_recipe("t3_imagenette_transfer")
    assert "mda-g200-l3-lr" not in paper_rows(t3) and "mda-g200-l3-lr" in extra_rows(t3, {})
    assert row_label(t3, "mda-g200-l3-lr") == "MDA-G200-L3-LR †" and row_label(t3, "mda") == "MDA"
    text = reading(t3, runs(erm=[20.0, 21.0, 22.0], mda=[30.0, 31.0, 32.0], mda_g200_l3_lr=[50.0, 51.0, 52.0]))
    assert "the paper's column is not comparable here" in text and "(paper:" not in text
    assert "agrees" not in text and "a gain larger than the spread" in text
    assert "MDA-G200-L3-LR † vs ERM" in text and "† added after looking at B" in text
    assert paper_header(t3) == "paper (B top-1; not comparable)" and paper_cell(t3, "mda") == "(31.1, not comparable)"
    usps = load_recipe("t5_usps")
    assert "agrees with the paper" in reading(usps, runs(erm=[80.0, 81.0, 82.0], mrt=[90.0, 91.0, 92.0]))
    assert paper_header(usps) == "paper (B top-1)" and paper_cell(usps, "mrt") == "93.3"


def test_no_paper_number_says_so_and_sweeps_are_ours():
    t7 = load_recipe("t7_gtsrb_k")
    text = reading(t7, runs(erm=[40.0, 41.0], mrt_k10=[50.0, 52.0], mat_paper_k5=[45.0, 46.0]))
    assert text.startswith("The paper has no B number") and "MRT-K10 vs ERM on B: +10.5" in text
    assert reading(t7, runs(mrt_k10=[50.0])) == "ERM has not run yet."


def test_the_model_column_names_the_variant():
    assert variant_note(AlgoConfig(name="mrt")) == ""
    assert variant_note(AlgoConfig(name="mrt", select="batch")) == ", batch selection"
    note = variant_note(AlgoConfig(name="mat", mat_init="zero", mat_step="grad", loss_reduction="mean"))
    assert note == ", δ₀ = zero, grad steps, mean loss"
