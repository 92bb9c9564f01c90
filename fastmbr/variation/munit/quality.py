"""``fastmbr model report``: one table of G variants (and their snapshots), each scored the same way, with grids.

Every G_DIR given (and every snapshot under it) becomes one row: preset, label-preserving weight, prior and box of
δ, iterations, batch, training minutes, content kept (also against the identity, and in all of k draws), shift
achieved, and its sample grid copied beside the table. The helpers (oracle, domain classifier) are trained once
into a shared cache, so every row is judged by the same two classifiers; their own test accuracies head the table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fastmbr.errors import FastmbrError
from fastmbr.fileio import atomic_write
from fastmbr.variation.munit.score import kept_in_all_draws


def g_folders(g_dirs: list[Path]) -> list[tuple[str, Path]]:
    """(row name, folder) for each G_DIR and each of its snapshots, in iteration order."""
    rows = []
    for g_dir in g_dirs:
        if not (g_dir / "G.json").is_file():
            raise FastmbrError(f"{g_dir / 'G.json'} is missing: {g_dir} is not a trained G directory")
        snapshots = sorted((g_dir / "snapshots").glob("iter_*")) if (g_dir / "snapshots").is_dir() else []
        final = json_iterations(g_dir)
        for snap in snapshots:
            iterations = json_iterations(snap)
            if iterations != final:
                rows.append((f"{g_dir.name}@{iterations}", snap))
        rows.append((g_dir.name, g_dir))
    return rows


def json_iterations(g_dir: Path) -> int:
    from fastmbr.variation.munit.io import read_meta

    return int(read_meta(g_dir).get("training", {}).get("iterations", 0))


def grid_of(folder: Path) -> Path | None:
    """The sample grid of a G folder: a snapshot's samples.png, else the last of samples/iter_*.png."""
    if (folder / "samples.png").is_file():
        return folder / "samples.png"
    grids = sorted((folder / "samples").glob("iter_*.png")) if (folder / "samples").is_dir() else []
    return grids[-1] if grids else None


def row(name: str, result: dict, grid: str | None) -> str:
    g = result["g"]
    box = g.get("delta_box") or ["?", "?"]
    return (f"| {name} | {g.get('preset')} | {g.get('semantic') or 0:g} | {g.get('prior')} [{box[0]:g}, {box[1]:g}] | "
            f"{g.get('iterations')} | {g.get('batch_size')} | {g.get('train_minutes')} | "
            f"{100 * result['content_kept']:.1f} | {result['content_kept_vs_identity']:.2f} | "
            f"{100 * kept_in_all_draws(result)[1]:.1f} | {100 * result['shift_achieved']:.1f} | "
            + (f"[grid]({grid})" if grid else "–") + " |")


def write_report(g_dirs: list[Path], dataset: str, shift: str, data_dir: str | None, device: str, out: Path,
                 cache_dir: Path, command: str) -> Path:
    """Score every G folder (stored scores reused while G is unchanged) and write the table to ``out``."""
    from fastmbr.repro.gscore import ensure_score

    folders = g_folders(g_dirs)
    loaded: dict = {}
    results = [(name, folder, ensure_score(folder, dataset, shift, data_dir, device, cache_dir, loaded))
               for name, folder in folders]
    images = out.with_suffix("")
    lines = [f"# Learned models of natural variation on {dataset} {shift}: content kept and shift achieved", "",
             f"- command: `{command}`", ""]
    first = results[0][2]
    oracle, domain = first["helpers"]["oracle_top1"], first["helpers"]["domain_top1"]
    lines += [f"- judges (the paper's CNN, {first['helpers']['epochs']} epochs on {first['helpers']['max_train']} "
              f"or fewer labelled A ∪ B training images): oracle top-1 {100 * oracle['real_a']:.1f}% on real A, "
              f"{100 * oracle['real_b']:.1f}% on real B; domain classifier {100 * domain['real_a']:.1f}% / "
              f"{100 * domain['real_b']:.1f}%", f"- {first['n_test']} test images of A; δ from each G's prior; "
              f"'all k' = every one of k draws keeps the label (what MRT-k's worst case sees)", "",
             "| G | preset | semantic | prior, box | iterations | batch | minutes | content kept % | × identity | "
             "all k kept % | shift achieved % | samples |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
             f"| identity (x_A) | – | – | – | – | – | – | {100 * first['identity']['content_kept']:.1f} | 1.00 | "
             f"{100 * first['identity']['content_kept']:.1f} | {100 * first['identity']['shift_achieved']:.1f} | – |",
             f"| real B | – | – | – | – | – | – | {100 * first['real_b']['content_kept']:.1f} | – | – | "
             f"{100 * first['real_b']['shift_achieved']:.1f} | – |"]
    for name, folder, result in results:
        grid = grid_of(folder)
        link = None
        if grid is not None:
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid, images / f"{name.replace('@', '-')}.png")
            link = f"{images.name}/{name.replace('@', '-')}.png"
        lines.append(row(name, result, link))
    lines += ["", "Grids: rows are test images of A; columns the input, G(x, δ) for 8 draws of δ, a real B image.", ""]
    atomic_write(out, lambda f: f.write("\n".join(lines).encode()))
    return out
