"""Paper experiments as recipes (experiments/*.yaml): run every algorithm × seed, then write results/NAME.md.

Runs go to ``runs/repro/NAME/<run>-s<seed>/``; a finished run (metrics.json present) is not run again, an
interrupted one resumes, so ``fastmbr repro NAME`` can be repeated until the table is complete. A run folder is
keyed by its resolved configuration: one trained with other settings than the recipe now gives is refused, never
reused, and the report leaves such folders out and says so (``check``). The report is
generated from those run folders alone: no number in ``results/*.md`` is typed by hand.

recipe.py reads a recipe and resolves each run's configuration; runner.py trains what is missing; report.py (with
plots.py, readings.py and gscore.py) writes the report; check.py holds what is checked before anything is trusted.
"""

from fastmbr.repro.recipe import EXPERIMENTS, load_recipe, run_config
from fastmbr.repro.report import write_report
from fastmbr.repro.runner import run_recipe

__all__ = ["EXPERIMENTS", "load_recipe", "run_config", "run_recipe", "write_report"]
