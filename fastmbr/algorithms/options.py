"""The algorithm variants a run config names (``AlgoConfig``) → ``build_algorithm`` keyword options.

Each variant names the paper's choice or ours (docs/design.md); None keeps the algorithm's default. A variant given
to an algorithm it does not apply to is a one-line error, not silently ignored.
"""

from __future__ import annotations

from fastmbr.algorithms.base import REDUCTIONS
from fastmbr.algorithms.inner import SELECTIONS
from fastmbr.algorithms.mat import MAT_INITS, MAT_STEPS
from fastmbr.errors import FastmbrError

# config field → (flag, the algorithms it applies to, allowed values)
VARIANTS = {
    "alpha": ("--alpha", ("mat", "pgd"), None),
    "select": ("--select", ("mrt",), SELECTIONS),
    "mat_init": ("--mat-init", ("mat",), MAT_INITS),
    "mat_step": ("--mat-step", ("mat",), MAT_STEPS),
    "loss_reduction": ("--loss-reduction", ("mrt", "mat", "mda", "pgd"), REDUCTIONS),
}


def check_variant(algo_cfg, field: str) -> None:
    flag, applies, allowed = VARIANTS[field]
    value = getattr(algo_cfg, field)
    if algo_cfg.name not in applies:
        raise FastmbrError(f"{flag} applies to {' / '.join(applies)}, not {algo_cfg.name}")
    if allowed is not None and value not in allowed:
        raise FastmbrError(f"{flag} must be one of {' | '.join(allowed)}, got {value!r}")


def algorithm_options(algo_cfg) -> dict:
    """Keyword options for ``build_algorithm(algo_cfg.name, k=..., lam=..., **options)``."""
    for field in VARIANTS:
        if getattr(algo_cfg, field, None) is not None:
            check_variant(algo_cfg, field)
    if getattr(algo_cfg, "shared_delta", False):
        if algo_cfg.name not in ("mrt", "mat", "mda"):
            raise FastmbrError(f"--shared-delta applies to mrt / mat / mda, not {algo_cfg.name}")
        if len(algo_cfg.models) < 2:
            raise FastmbrError("--shared-delta composes several models of variation: give --model at least twice")
    renamed = {"alpha": "alpha", "select": "select", "mat_init": "init", "loss_reduction": "reduction"}
    options = {key: getattr(algo_cfg, field) for field, key in renamed.items()
               if getattr(algo_cfg, field, None) is not None}
    if getattr(algo_cfg, "mat_step", None) is not None:
        options["signed"] = algo_cfg.mat_step == "sign"
    return options
