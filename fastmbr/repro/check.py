"""What ``fastmbr repro`` checks before it trusts a recipe, a run folder or a lock.

- A recipe is YAML of a known shape: unknown keys (``epohcs: 3``), wrong types, unknown tags and anything but a
  mapping are errors naming the file and the key.
- Run names are ``[A-Za-z0-9._-]+`` and every run folder resolves under the runs root (no ``../../x``).
- A run folder is keyed by its resolved configuration: a finished run whose config.json differs from what the
  recipe now asks for (epochs 1 → 3) is not reused; the differences are named.
- Each run folder is taken by one process at a time with ``fcntl.flock`` (released by the kernel when its owner
  dies, so no stale lock can block, and no empty lock file can be mistaken for a stale one).
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path

from fastmbr.errors import FastmbrError

RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")
NUMBER, TEXT, ANY = (int, float), (str,), None

RUN_KEYS = {"algo": TEXT, "k": (int,), "lambda": NUMBER, "alpha": NUMBER, "model": (list,), "epochs": (int,),
            "warmup_epochs": (int,), "lr": NUMBER, "lr_end": NUMBER, "image_size": (int,), "limit": (int,),
            "classes": (str, int), "train_also": TEXT, "augment": TEXT, "arch": TEXT,
            "snapshot": (int,),  # a sweep over the snapshots of one learned G (Figure 8)
            "select": TEXT, "mat_init": TEXT, "mat_step": TEXT, "loss_reduction": TEXT, "shared_delta": ANY,
            "after_b": ANY, "same_as": TEXT}  # the paper's variants by name (docs/design.md); rows added after B was seen
TOP_KEYS = {"title": TEXT, "dataset": TEXT, "shift": TEXT, "seeds": (int,), "settings": (dict,), "full": (dict,),
            "paper": (dict,), "runs": (dict,), "sweep": (dict,), "learned_models": (dict,), "eval_shifts": (list,),
            "eval_axis": TEXT, "reference": TEXT, "notes": TEXT, "paper_comparable": ANY}
LEARNED_KEYS = {"dataset": TEXT, "shift": TEXT, "size": TEXT, "iters": (int,), "lr_step": (int,),
                "cycle": NUMBER, "classes": (str, int), "image_size": (int,), "batch_size": (int,), "lr": NUMBER,
                "semantic": NUMBER, "prior": TEXT, "bound": NUMBER, "snapshots": (list,)}
SWEEP_KEYS = {"param": TEXT, "values": (list,), "runs": (dict,)}


def check_keys(data, schema: dict, where: str, extra: dict | None = None, nullable: bool = True) -> None:
    """``data`` is a mapping whose keys are in ``schema`` and whose values have the listed types (or are null, the
    preset's value, when ``nullable``)."""
    if not isinstance(data, dict):
        raise FastmbrError(f"{where}: expected a mapping, got {type(data).__name__}")
    schema = {**schema, **(extra or {})}
    for key, value in data.items():
        if key not in schema:
            raise FastmbrError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(map(str, schema)))}")
        types = schema[key]
        if value is None and nullable:
            continue
        if types is not None and (not isinstance(value, types) or isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in types)
            raise FastmbrError(f"{where}: {key} must be {names}, got {value!r}")


def check_run_name(name, where: str) -> None:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise FastmbrError(f"{where}: run name {name!r} must match [A-Za-z0-9._-]+")


def validate_recipe(recipe, path: Path) -> None:
    """The whole recipe's shape (see the module docstring)."""
    check_keys(recipe, TOP_KEYS, str(path), nullable=False)
    for key in ("title", "dataset"):
        if key not in recipe:
            raise FastmbrError(f"{path}: missing key {key!r}")
    for block in ("settings", "full"):
        check_keys(recipe.get(block, {}), RUN_KEYS, f"{path}: {block}")
    for name, spec in recipe.get("runs", {}).items():
        check_run_name(name, str(path))
        check_keys(spec, RUN_KEYS, f"{path}: runs: {name}", {"full": (dict,)})
        check_keys(spec.get("full", {}), RUN_KEYS, f"{path}: runs: {name}: full")
        if "algo" not in spec:
            raise FastmbrError(f"{path}: runs: {name}: missing key 'algo'")
    if "sweep" in recipe:
        sweep = recipe["sweep"]
        check_keys(sweep, SWEEP_KEYS, f"{path}: sweep")
        if "param" not in sweep or "runs" not in sweep:
            raise FastmbrError(f"{path}: sweep needs 'param' and 'runs'")
        for name, spec in sweep["runs"].items():
            check_run_name(name, f"{path}: sweep")
            check_keys(spec, RUN_KEYS, f"{path}: sweep: runs: {name}", {"values": (list,), "full": (dict,)})
            for value in spec.get("values", sweep.get("values", [])):
                check_run_name(f"{name}-{sweep['param']}{value}", f"{path}: sweep")
    for name, spec in recipe.get("learned_models", {}).items():
        check_run_name(name, f"{path}: learned_models")
        check_keys(spec, LEARNED_KEYS, f"{path}: learned_models: {name}", {"full": (dict,)})
        check_keys(spec.get("full", {}), LEARNED_KEYS, f"{path}: learned_models: {name}: full")


def load_yaml(path: Path):
    """``yaml.safe_load`` (no tags that build objects), its errors as one line naming the file."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise FastmbrError(f"{path}: not a valid recipe ({first[:200]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FastmbrError(f"{path}: cannot read ({exc})") from None


def run_folder(root: Path, run: str, seed: int) -> Path:
    """``root/RUN-sSEED``, refused unless the name is plain and the path resolves under ``root``."""
    check_run_name(run, "recipe")
    out = root / f"{run}-s{seed}"
    base = root.resolve()
    if out.is_symlink() and is_sibling_run(out.resolve(), base):
        return out  # a run shared with another recipe (same_as): a link to a run folder of a recipe beside this one
    if not out.resolve().is_relative_to(base):
        raise FastmbrError(f"run {run!r}: its folder {out} resolves outside the runs root {base}")
    return out


def is_sibling_run(target: Path, base: Path) -> bool:
    """``target`` is ``ROOT/RECIPE/RUN-sN`` for another recipe folder beside ``base`` under the same runs root."""
    recipe = target.parent
    return (recipe.parent == base.parent and recipe != base and RUN_NAME.fullmatch(recipe.name) is not None
            and re.fullmatch(r"[A-Za-z0-9._-]+-s\d+", target.name) is not None)


def stale_differences(run_dir: Path, cfg) -> list[str]:
    """How the configuration a run folder was trained with differs from ``cfg`` (what the recipe asks for now)."""
    from fastmbr.engine.resume_check import FREE, differences
    from fastmbr.engine.rundir import read_run_config

    return config_differences(read_run_config(run_dir / "config.json"), cfg)


def config_differences(saved: dict, cfg) -> list[str]:
    """``field: saved → now`` between a config.json's dict and a RunConfig, for the fields that shape the run.
    The saved dict goes through RunConfig first, so that a field added to the code since it was written (its
    default then in force) is no difference."""
    from fastmbr.config import RunConfig
    from fastmbr.engine.resume_check import FREE, differences

    old = RunConfig.from_dict({k: v for k, v in saved.items() if k not in ("options", "commit", "models_sha256")})
    return differences(old.to_dict(), cfg.to_dict(), None, FREE, frozenset())


@contextmanager
def run_lock(run_dir: Path, name: str = ".repro.lock"):
    """Yields None when this process holds ``run_dir``'s lock, else the owner's pid (0 when unknown). The lock is
    an ``fcntl.flock`` on ``run_dir/.repro.lock``: the kernel drops it when the owner exits, however it exits."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            yield int(text) if text.isdigit() else 0
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield None
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def drop_stale(runs: dict[str, list[dict]], expected) -> tuple[dict[str, list[dict]], list[str]]:
    """Leave out of a report the run folders trained with another configuration than the recipe's now
    (``expected(run, seed)`` → RunConfig, None for a run the recipe no longer has); say which and why."""
    kept, notes = {}, []
    for run, metrics in runs.items():
        for m in metrics:
            saved = m.get("config", {})
            cfg = expected(run, saved.get("seed", 0)) if saved else None
            found = config_differences(saved, cfg) if cfg is not None else []
            if found:
                notes.append(f"{run}-s{saved.get('seed', 0)} ({'; '.join(found)})")
            else:
                kept.setdefault(run, []).append(m)
    return kept, notes
