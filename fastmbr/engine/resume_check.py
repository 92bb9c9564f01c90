"""What may change when a run resumes, and what may not.

A resumed run (``train --resume``, ``--auto-resume``, ``model train --resume``, a rerun of ``repro``) must be the
run that was started. Its saved configuration is compared with the new one, and any difference that changes the
result (algorithm, k, λ, lr, dataset, shift, seed, batch, image size, model of variation, ...) is refused with a
message naming each field, its saved and its new value. What only changes how the run is executed may differ:
the device, the loader backend, compilation, logging and checkpoint cadence; and the epochs may grow.

On the command line only the flags the user gave are compared (``train mnist --out R --resume`` continues R as it
was configured); through the Python API the whole configuration is. Learned models of variation are pinned by
content: the sha256 of each G (from its G.json, itself checked against G.safetensors when loaded) is recorded in
config.json and checked again on resume and eval.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fastmbr.errors import FastmbrError

# Config paths that do not change a run's result: they may differ between a run and its resume.
FREE = frozenset({
    "device", "out", "amp", "compile", "compile_mode", "channels_last", "log_every", "checkpoint_every",
    "keep_checkpoints", "max_nonfinite", "data.loader", "data.num_workers", "data.eval_batch_size", "data.data_dir",
    "options.accumulate", "options.deterministic", "options.tensorboard",
})
GROWS = frozenset({"optim.epochs"})

# ``fastmbr train`` flag (the parameter's name) → the config path it sets.
CLI_FIELDS = {
    "dataset": "data.dataset", "shift": "data.shift", "algo": "algo.name", "k": "algo.k", "lam": "algo.lam",
    "alpha": "algo.alpha", "model": "algo.models", "arch": "arch", "epochs": "optim.epochs",
    "warmup_epochs": "optim.warmup_epochs", "batch_size": "data.batch_size", "lr": "optim.lr",
    "optimizer": "optim.optimizer", "image_size": "data.image_size", "augment": "data.augment",
    "loader": "data.loader", "skip_corrupt": "data.skip_corrupt", "max_resolution": "data.max_resolution",
    "device": "device", "data_dir": "data.data_dir", "limit": "data.limit", "classes": "data.classes",
    "train_also": "data.train_also", "seed": "seed", "compile": "compile", "compile_mode": "compile_mode",
    "amp": "amp", "checkpoint_every": "checkpoint_every", "max_nonfinite": "max_nonfinite",
    "keep_checkpoints": "keep_checkpoints", "log_every": "log_every", "accumulate": "options.accumulate",
    "sync_bn": "options.sync_bn", "dropout": "options.dropout", "deterministic": "options.deterministic",
}


def given_fields(ctx) -> set[str]:
    """The config paths set by flags the user actually gave (not left at their defaults)."""
    given = set()
    for name, path in CLI_FIELDS.items():
        source = ctx.get_parameter_source(name)  # click's ParameterSource (typer vendors click)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(path)
    return given


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def differences(saved: dict, new: dict, compared: set[str] | None, free: frozenset, grows: frozenset) -> list[str]:
    """``field: saved → new`` for every compared field whose change would change the run."""
    saved, new = flatten(saved), flatten(new)
    found = []
    for path in sorted(set(saved) | set(new)):
        if path in free or (compared is not None and path not in compared):
            continue
        old, value = saved.get(path), new.get(path)
        if same(old, value):
            continue
        if path in grows and isinstance(old, int) and isinstance(value, int) and value >= old:
            continue
        found.append(f"{path}: {old!r} → {value!r}" + (" (may only grow)" if path in grows else ""))
    return found


def resumed_config(saved_json: dict, cfg, options, given: set[str] | None, run_dir: Path):
    """The configuration a resumed run continues with: the saved one, with the fields that may change taken from
    the new one. Refuses (FastmbrError) any other difference, and a learned G whose content changed."""
    from fastmbr.config import RunConfig
    from fastmbr.engine.trainer import TrainOptions

    saved = RunConfig.from_dict(saved_json)
    saved_options = TrainOptions(**{k: v for k, v in saved_json.get("options", {}).items()
                                    if k in TrainOptions.__dataclass_fields__})
    old = {**saved.to_dict(), "options": asdict(saved_options)}
    new = {**cfg.to_dict(), "options": asdict(options)}
    found = differences(old, new, given, FREE, GROWS)
    if found:
        raise FastmbrError(f"{run_dir} holds another run; refusing to resume it with a different configuration "
                           f"({'; '.join(found)}). Use another --out for a new run")
    check_model_hashes(saved_json.get("models_sha256", {}), run_dir)
    take = {path for path in FREE | GROWS if given is None or path in given} | {"device", "out"}
    merged = flatten(old)
    flat_new = flatten(new)
    for path in take:
        if path in flat_new:
            merged[path] = flat_new[path]
    return unflatten_config(merged)


def unflatten_config(flat: dict):
    from fastmbr.config import RunConfig
    from fastmbr.engine.trainer import TrainOptions

    nested: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    options = nested.pop("options", {})
    return RunConfig.from_dict(nested), TrainOptions(**options)


# ---- learned models of variation, pinned by content -----------------------------------------------------------
def model_hashes(specs: list[str]) -> dict[str, str]:
    """{G folder spec: sha256 of its G.safetensors (from G.json)} for the learned models among ``specs``."""
    from fastmbr.variation.munit.io import META, read_meta

    hashes = {}
    for spec in specs:
        if not spec.startswith("known:") and (Path(spec) / META).is_file():
            hashes[spec] = read_meta(spec).get("sha256", "")
    return hashes


def check_model_hashes(recorded: dict[str, str], run_dir: Path, missing_ok: bool = False) -> None:
    """Refuse when a G the run was trained with now holds other weights (another G at the same path)."""
    from fastmbr.variation.munit.io import META

    for spec, sha in recorded.items():
        if not (Path(spec) / META).is_file():
            if missing_ok:
                continue
            raise FastmbrError(f"{run_dir} was trained with the G in {spec}, which is gone")
        now = model_hashes([spec]).get(spec, "")
        if now != sha:
            raise FastmbrError(f"{run_dir} was trained with the G in {spec} of sha256 {sha[:12]}…, but that folder "
                               f"now holds another G ({now[:12]}…); refusing to use it in its place")


# ---- MUNIT (model train --resume) -----------------------------------------------------------------------------
MUNIT_FREE = frozenset({"checkpoint_every", "sample_rows", "sample_k", "snapshots"})  # what is kept, not learned
MUNIT_GROWS = frozenset({"iters"})


def check_same_munit_run(saved: dict, new: dict, path: Path) -> None:
    """``model train --resume`` continues the same training: same data (source), same hyper-parameters."""
    saved = dict(saved)
    new = dict(new)
    if not new.get("source"):  # the Python API may leave the source to the checkpoint
        new.pop("source", None)
        saved.pop("source", None)
    for d in (saved, new):
        if isinstance(d.get("source"), dict):
            d["source"] = {k: v for k, v in d["source"].items() if k != "notes"}
    found = differences(saved, new, None, MUNIT_FREE, MUNIT_GROWS)
    if found:
        raise FastmbrError(f"{path}: refusing to resume a different training ({'; '.join(found)}); use another "
                           f"--out for a new G")


def refuse_to_overwrite_g(out_dir: Path, resume: bool) -> None:
    """``model train`` without --resume never overwrites a G it finds (finished or not)."""
    from fastmbr.variation.munit.io import META, WEIGHTS

    present = [name for name in (WEIGHTS, META) if (Path(out_dir) / name).exists()]
    if present and not resume:
        raise FastmbrError(f"{out_dir} already holds a G ({', '.join(present)}); choose another --out (or pass "
                           f"--resume to continue its training from checkpoint.pt)")
