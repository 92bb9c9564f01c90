"""The score of each learned G a recipe uses, kept beside it (``G_DIR/score.json``) and shown beside every row.

A learned-G row of a results table means little without knowing how good that G is: rows trained with a G that
destroys the sign and rows trained with one that keeps it are different experiments. So the recipe scores each G
it uses (``fastmbr model score``'s numbers, the helpers cached once per dataset and shift under ``G/score_cache``),
and the report prints that score in the row. A score is tied to G's sha256: a G retrained in place is re-scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastmbr.errors import FastmbrError
from fastmbr.fileio import atomic_write
from fastmbr.variation.munit.score import kept_in_all_draws

SCORE = "score.json"


def snapshot_dir(g_dir: Path, iteration: int) -> Path:
    from fastmbr.variation.munit.train import snapshot_dir as where

    return where(g_dir, iteration)


def has_snapshot(g_dir: Path, iteration: int) -> bool:
    return (snapshot_dir(g_dir, iteration) / "G.json").is_file()


def read_score(g_dir: Path) -> dict | None:
    """The stored score of G, or None when there is none or it belongs to other weights."""
    from fastmbr.variation.munit.io import read_meta

    path = Path(g_dir) / SCORE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored if stored.get("g_sha256") == read_meta(g_dir).get("sha256") else None


def ensure_score(g_dir: Path, dataset: str, shift: str, data_dir: str | None, device: str,
                 cache_dir: Path, loaded: dict | None = None) -> dict:
    """Score G once (or again after it changed) and store the result in ``G_DIR/score.json``.

    ``loaded``: a dict the caller keeps across calls, so that scoring several G's decodes the data once."""
    from fastmbr.engine.trainer import resolve_device
    from fastmbr.pipelines.datasets import load_domains
    from fastmbr.variation.munit.io import load_variation, read_meta
    from fastmbr.variation.munit.score import describe_g, score

    found = read_score(g_dir)
    if found is not None:
        return found
    meta = read_meta(g_dir)
    dev = resolve_device(device)
    g = load_variation(g_dir, dev)
    key = (dataset, shift, data_dir, g.image_size)
    loaded = {} if loaded is None else loaded
    if key not in loaded:
        loaded[key] = load_domains(dataset, shift, data_dir, image_size=g.image_size)
    domains = loaded[key]
    result = {**score(g, domains, dev, cache_dir, g_info=describe_g(meta)), "g_sha256": meta["sha256"]}
    atomic_write(Path(g_dir) / SCORE, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    return result


def summary(result: dict | None) -> str:
    """One cell: what G is and how good it is, e.g. ``tiny 4000 it ×16, sem 1; kept 85% (0.97× id), shift 63%``."""
    if result is None:
        return "not scored"
    g = result.get("g", {})
    sem = f", semantic {g['semantic']:g}" if g.get("semantic") else ""
    draws, kept = kept_in_all_draws(result)
    worst_part = f", all {draws} draws {100 * kept:.0f}%"
    return (f"{g.get('preset')} {g.get('iterations')} it × batch {g.get('batch_size')}{sem}: content kept "
            f"{100 * result['content_kept']:.0f}% ({result['content_kept_vs_identity']:.2f}× identity"
            f"{worst_part}), shift {100 * result['shift_achieved']:.0f}%")


def check_snapshot(g_dir: Path, iteration: int) -> Path:
    if not has_snapshot(g_dir, iteration):
        raise FastmbrError(f"{g_dir} has no snapshot at iteration {iteration}: list it under the learned model's "
                           f"snapshots and train it again (move {g_dir} away)")
    return snapshot_dir(g_dir, iteration)


def snapshot_scores(g_dir: Path, values: list[int], folder: Path) -> tuple[dict[int, float], list[str]]:
    """For a sweep over the snapshots of one G: (value → content kept %, for the plot) and the table rows of each
    snapshot's score; ``folder/g_scores.csv`` holds them too."""
    scores = {v: read_score(snapshot_dir(g_dir, v)) if has_snapshot(g_dir, v) else None for v in values}
    csv = ["snapshot,content_kept,content_kept_vs_identity,content_kept_worst_of_k,shift_achieved"]
    for v, r in scores.items():
        if r is not None:
            csv.append(f"{v},{r['content_kept']:.4f},{r['content_kept_vs_identity']:.4f},{kept_in_all_draws(r)[1]:.4f},"
                       f"{r['shift_achieved']:.4f}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "g_scores.csv").write_text("\n".join(csv) + "\n")

    def cells(pick) -> str:
        return " | ".join(f"{100 * pick(scores[v]):.1f}%" if scores[v] else "–" for v in values)

    rows = [f"| G content kept ([CSV]({folder.name}/g_scores.csv)) | {cells(lambda r: r['content_kept'])} |",
            f"| G content kept, all 10 draws | {cells(lambda r: kept_in_all_draws(r)[1])} |",
            f"| G shift achieved | {cells(lambda r: r['shift_achieved'])} |"]
    return {v: 100 * r["content_kept"] for v, r in scores.items() if r is not None}, rows

