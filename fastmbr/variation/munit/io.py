"""A trained G on disk: ``G_DIR/G.safetensors`` (A→B inference weights) + ``G_DIR/G.json`` (everything else).

G.json records the architecture, size preset, q, prior, Δ, image size and channels, what G was trained on, the
iterations, and the sha256 of G.safetensors; loading refuses a file whose checksum differs. The full trainer
state (both domains, critics, optimisers) is a separate atomic checkpoint used only by ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fastmbr.errors import FastmbrError
from fastmbr.fileio import atomic_write
from fastmbr.variation.munit.networks import MunitArch
from fastmbr.variation.munit.variation import MunitVariation, inference_modules

WEIGHTS, META, CHECKPOINT = "G.safetensors", "G.json", "checkpoint.pt"
FORMAT = "fastmbr-munit-1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_variation(g: MunitVariation, g_dir: str | Path, size: str, training: dict | None = None) -> Path:
    """Write G.safetensors then G.json (with the weights' sha256) into g_dir; returns g_dir."""
    g_dir = Path(g_dir)
    tensors = {
        f"{prefix}.{name}": t.detach().to("cpu", torch.float32).contiguous()
        for prefix, module in inference_modules(g).items()
        for name, t in module.state_dict().items()
    }
    atomic_write(g_dir / WEIGHTS, lambda f: f.write(save(tensors, metadata={"format": FORMAT})))
    meta = {
        "format": FORMAT,
        "architecture": "munit",
        "direction": "A->B",
        "size": size,
        "arch": g.arch.to_dict(),
        "delta_dim": g.delta_dim,
        "prior": g.prior,
        "delta_box": [-g.bound, g.bound],
        "image_size": g.image_size,
        "channels": g.arch.channels,
        "training": training or {},
        "sha256": sha256_file(g_dir / WEIGHTS),
    }
    atomic_write(g_dir / META, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return g_dir


def read_meta(g_dir: str | Path) -> dict:
    path = Path(g_dir) / META
    if not path.is_file():
        raise FastmbrError(f"{path} is missing: {g_dir} is not a trained G directory")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FastmbrError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise FastmbrError(f"{path}: unknown format {found!r}, expected {FORMAT!r}")
    check_meta(meta, path)
    return meta


# G.json's keys and their types (save_variation writes exactly these; "training" is free-form provenance).
META_TYPES = {"format": str, "architecture": str, "direction": str, "size": str, "arch": dict, "delta_dim": int,
              "prior": str, "delta_box": list, "image_size": int, "channels": int, "training": dict, "sha256": str}


def check_meta(meta: dict, path: Path) -> None:
    """Unknown keys, missing keys and wrong types in G.json are errors naming the key (never a TypeError later)."""
    from fastmbr.typed import build

    unknown = sorted(set(meta) - set(META_TYPES))
    if unknown:
        raise FastmbrError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(META_TYPES))}")
    for key, kind in META_TYPES.items():
        if key not in meta:
            raise FastmbrError(f"{path}: missing key {key!r}")
        if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
            raise FastmbrError(f"{path}: {key} must be {kind.__name__}, got {meta[key]!r}")
    box = meta["delta_box"]
    if len(box) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise FastmbrError(f"{path}: delta_box must be [low, high], got {box!r}")
    build(MunitArch, meta["arch"], f"{path}: arch")


def training_finished(g_dir: str | Path) -> bool:
    """Whether G_DIR holds the last iteration of its training: G.json is rewritten at every checkpoint, so its
    presence alone says nothing (a G written before ``planned_iterations`` was recorded counts as finished)."""
    if not (Path(g_dir) / META).is_file():
        return False
    training = read_meta(g_dir).get("training", {})
    return training.get("iterations", 0) >= training.get("planned_iterations", 0)


def load_variation(g_dir: str | Path, device: str | torch.device = "cpu", decode_chunk: int | None = None,
                   frozen: bool = True) -> MunitVariation:
    """G_DIR → MunitVariation, after checking G.safetensors against the sha256 in G.json; frozen by default."""
    g_dir = Path(g_dir)
    meta = read_meta(g_dir)
    weights = g_dir / WEIGHTS
    if not weights.is_file():
        raise FastmbrError(f"{weights} is missing")
    actual = sha256_file(weights)
    if actual != meta.get("sha256"):
        raise FastmbrError(f"{weights}: sha256 {actual[:12]}… does not match {meta.get('sha256', '')[:12]}… "
                           f"recorded in {META}; the file is corrupt or was replaced")
    low, high = meta["delta_box"]
    if low != -high:
        raise FastmbrError(f"{g_dir / META}: delta_box {meta['delta_box']} must be symmetric [-b, b]")
    g = MunitVariation(MunitArch(**meta["arch"]), meta["image_size"], meta["prior"], high, decode_chunk)
    state = load_file(str(weights))
    for prefix, module in inference_modules(g).items():
        part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(part)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise FastmbrError(f"{weights}: weights do not fit the architecture in {META} ({first})") from None
    g = g.to(device)
    return g.freeze() if frozen else g


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FastmbrError(f"--resume: no checkpoint at {path}")
    from fastmbr.engine.checkpoint import safe_load

    state = safe_load(path)  # weights_only=True: a crafted file is refused, never run
    missing = {"iteration", "trainer", "opt_gen", "opt_dis", "sched_gen", "sched_dis", "rng", "config"} - (
        set(state) if isinstance(state, dict) else set())
    if missing:
        raise FastmbrError(f"{path}: not a MUNIT checkpoint of fastmbr (missing {', '.join(sorted(missing))})")
    return state
