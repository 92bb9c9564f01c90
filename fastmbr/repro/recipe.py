"""Recipes (experiments/*.yaml): loading and checking one, its sweeps and learned models, and each run's config."""

from __future__ import annotations

from pathlib import Path

from fastmbr.config import preset_config
from fastmbr.errors import FastmbrError
from fastmbr.repro.check import load_yaml, run_folder, validate_recipe

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


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


def resolve_models(specs: list[str], root: Path, recipe: dict, full: bool) -> list[str]:
    """``learned:NAME`` → the recipe's G folder, ``learned:NAME@N`` → its snapshot at iteration N; other specs
    unchanged."""
    from fastmbr.repro.gscore import snapshot_dir

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


def shift_key(shift: str) -> str:
    """File stem of a shift's evaluation in a run's eval/ (``corruption:snow-3`` → ``corruption_snow-3``)."""
    return shift.replace(":", "_")
