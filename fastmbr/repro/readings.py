"""The generated readings of a recipe's report: like compared with like.

First the paper's own model-based rows (the runs the recipe's ``paper:`` gives a number for: the paper's model kind,
k and λ), each against the reference row (ERM by default) and against the paper's own margin. Then, on a line of
their own, the rows the paper does not have (known models where it learned one, tuned λ or lr, other G's): ours.
Rows a recipe marks ``after_b: true`` were added after B's numbers of the first rows were seen: they are flagged
(†) and never stand in for a paper row. A recipe with ``paper_comparable: false`` (T3: Tiny-ImageNet or Imagenette
at 32 px with the paper's CNN is not ImageNet with ResNet-50) shows its paper column as not comparable and no
reading claims agreement with it.
"""

from __future__ import annotations

import statistics

from fastmbr.config import MODEL_BASED

AFTER_B = "†"


def after_b(recipe: dict, run: str) -> bool:
    return bool(recipe["runs"].get(run, {}).get("after_b", False))


def row_label(recipe: dict, run: str) -> str:
    """The run's name in a table: upper case, † when it was added after looking at B."""
    return run.upper() + (f" {AFTER_B}" if after_b(recipe, run) else "")


def variant_note(algo_cfg) -> str:
    """The algorithm variants a run names (docs/design.md), for the table's model column: '' for the defaults."""
    notes = {"select": "{} selection", "mat_init": "δ₀ = {}", "mat_step": "{} steps", "loss_reduction": "{} loss"}
    parts = [text.format(getattr(algo_cfg, key)) for key, text in notes.items() if getattr(algo_cfg, key, None)]
    parts += ["one shared δ"] if getattr(algo_cfg, "shared_delta", False) else []
    return "".join(f", {p}" for p in parts)


def comparable(recipe: dict) -> bool:
    return bool(recipe.get("paper_comparable", True))


def paper_header(recipe: dict) -> str:
    return "paper (B top-1)" if comparable(recipe) else "paper (B top-1; not comparable)"


def paper_cell(recipe: dict, run: str) -> str:
    value = recipe.get("paper", {}).get(run)
    if value is None:
        return "–"
    return str(value) if comparable(recipe) else f"({value}, not comparable)"


def model_based(recipe: dict, run: str) -> bool:
    return recipe["runs"].get(run, {}).get("algo") in MODEL_BASED


def paper_rows(recipe: dict) -> list[str]:
    """The model-based runs the paper gives a number for, in recipe order (never an after-B row)."""
    paper = recipe.get("paper", {})
    return [r for r in recipe["runs"] if r in paper and model_based(recipe, r) and not after_b(recipe, r)]


def extra_rows(recipe: dict, runs: dict) -> list[str]:
    """Model-based runs (the recipe's, and sweep points) that are not the paper's rows."""
    own = set(paper_rows(recipe))
    return [r for r in recipe["runs"] if r not in own and model_based(recipe, r)]


def b_top1(runs: dict, run: str) -> list[float]:
    return [m["test"]["B"]["top1"] for m in runs.get(run, [])]


def spread(*series: list[float]) -> float:
    return max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in series)


def verdict(gap: float, base: list[float], row: list[float], paper_gap: float | None) -> str:
    """What a gap over the reference says, given the seeds behind it and (if any, comparable) the paper's gap."""
    if len(base) < 2 or len(row) < 2:
        return "one seed: no spread over seeds to judge the gap against"
    width = spread(base, row)
    if gap <= 0:
        return "does not reproduce the paper's gain on B under this budget" if paper_gap is None or paper_gap > 0 \
            else "no gain, as in the paper"
    if gap <= width:
        return f"a gain within the spread over seeds (± {width:.1f}), not a clear one"
    if paper_gap is None:
        return "a gain larger than the spread over seeds"
    if paper_gap > 0:
        return "agrees with the paper: model-based training helps on B"
    return f"a clear gain where the paper has none ({paper_gap:+.1f})"


def row_reading(recipe: dict, runs: dict, run: str, ref: str, against_paper: bool) -> str:
    base, row = b_top1(runs, ref), b_top1(runs, run)
    gap = statistics.mean(row) - statistics.mean(base)
    paper = recipe.get("paper", {})
    paper_gap = paper[run] - paper[ref] if against_paper and run in paper and ref in paper else None
    paper_part = f" (paper: {paper_gap:+.1f})" if paper_gap is not None else ""
    return (f"{row_label(recipe, run)} vs {ref.upper()} on B: {gap:+.1f} points{paper_part}, "
            f"{len(row)} vs {len(base)} seeds; {verdict(gap, base, row, paper_gap)}")


def paper_line(recipe: dict, runs: dict, ref: str) -> str:
    rows = [r for r in paper_rows(recipe) if runs.get(r)]
    if not paper_rows(recipe):
        return "The paper has no B number for this table's model-based rows."
    if not rows:
        return "None of the paper's model-based rows has finished yet."
    against = comparable(recipe)
    head = "The paper's rows (its model kind, k, λ)" + ("" if against else
                                                         " — the paper's column is not comparable here")
    return head + ": " + "; ".join(row_reading(recipe, runs, r, ref, against) for r in rows) + "."


def extra_line(recipe: dict, runs: dict, ref: str) -> str:
    """Ours: the best finished extra row (among those with the reference's number of seeds, when any has it)."""
    finished = {r: b_top1(runs, r) for r in extra_rows(recipe, runs) if runs.get(r)}
    if not finished:
        return ""
    base = b_top1(runs, ref)
    enough = {r: v for r, v in finished.items() if len(v) >= len(base)} or finished
    best = max(enough, key=lambda r: statistics.mean(enough[r]))
    line = (f"Ours, rows the paper does not have ({len(finished)}; the best shown): "
            f"{row_reading(recipe, runs, best, ref, against_paper=False)}.")
    if any(after_b(recipe, r) for r in finished):
        line += f" {AFTER_B} added after looking at B."
    return line


def reading(recipe: dict, runs: dict[str, list[dict]]) -> str:
    """The report's generated reading: the paper's rows first, then ours on a separate line."""
    ref = recipe.get("reference", "erm")
    if not runs.get(ref):
        return f"{ref.upper()} has not run yet."
    if not any(runs.get(r) for r in recipe["runs"] if model_based(recipe, r)):
        return "No model-based run has finished yet."
    lines = [paper_line(recipe, runs, ref), extra_line(recipe, runs, ref)]
    return "\n\n".join(line for line in lines if line)
