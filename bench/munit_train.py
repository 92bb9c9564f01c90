"""The MUNIT training iteration: fastmbr's ``MunitTrainer.step`` against NVlabs' trainer (munit_reference.py).

Both arms start from the same weights and optimiser settings, train on the same batch with styles from the same
prior, fp32, in one process, interleaved round by round. Variants of fastmbr's step (channels-last, bf16 autocast,
torch.compile under ``--compile``) are more rows of the same case, timed in the same rounds; each says how far its
first step's losses are from the default step's (same weights, same styles), so a fast but wrong variant shows.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from fastmbr.bench.munit_reference import ReferenceMunit
from fastmbr.bench.stages import BenchSetup, side_by_side
from fastmbr.variation.munit.train import MunitTrainConfig, MunitTrainer

# Per preset: batch, image size and architecture overrides (base's critics fitted to 32 px: 3 layers, not 4).
PRESETS = {
    "tiny": {"batch": 16, "image_size": 32, "arch_overrides": {}},
    "base": {"batch": 1, "image_size": 32, "arch_overrides": {"dis_layers": 3}},
}


def trainer_for(size: str, device: torch.device) -> MunitTrainer:
    p = PRESETS[size]
    cfg = MunitTrainConfig(size=size, batch_size=p["batch"], arch_overrides=p["arch_overrides"]).resolved()
    torch.manual_seed(0)
    return MunitTrainer(cfg.arch(3), cfg).to(device)


def compiled(trainer: MunitTrainer) -> MunitTrainer:
    """Each network (encoders, decoder, critics) compiled; the step, its backward and Adam as they are."""
    for gen in (trainer.gen_a, trainer.gen_b):
        for name in ("content", "style", "decoder"):
            setattr(gen, name, torch.compile(getattr(gen, name), dynamic=False))
    for name in ("dis_a", "dis_b"):
        setattr(trainer, name, torch.compile(getattr(trainer, name), dynamic=False))
    return trainer


def variants(trainer: MunitTrainer, setup: BenchSetup) -> dict[str, tuple[MunitTrainer, bool, object]]:
    """name → (trainer copy, channels-last inputs, precision context) for every variant that applies here."""
    out = {"fastmbr": (copy.deepcopy(trainer), False, nullcontext)}
    out["channels-last"] = (copy.deepcopy(trainer).to(memory_format=torch.channels_last), True, nullcontext)
    bf16 = lambda: torch.autocast(setup.device.type, dtype=torch.bfloat16)  # noqa: E731
    out["bf16 autocast"] = (copy.deepcopy(trainer), False, bf16)
    if setup.compile:
        out["compiled"] = (compiled(copy.deepcopy(trainer)), False, nullcontext)
    return out


def first_step_losses(trainer: MunitTrainer, xa, xb, precision) -> dict[str, float]:
    """The loss terms of one step from ``trainer``'s present state (on a copy: the trainer is not advanced)."""
    probe = copy.deepcopy(trainer)
    with precision():
        return probe.step(xa, xb, torch.Generator().manual_seed(1))


def loss_error(losses: dict[str, float], truth: dict[str, float]) -> float:
    """Largest relative difference of a loss term from the default step's."""
    return max(abs(losses[k] - v) / max(abs(v), 1e-12) for k, v in truth.items())


def bench_munit_train(setup: BenchSetup, size: str) -> list[dict]:
    """Seconds per training iteration of each path; rows: fastmbr vs the reference, then each variant."""
    p = PRESETS[size]
    trainer, dev = trainer_for(size, setup.device), setup.device
    gen = torch.Generator().manual_seed(0)
    xa = torch.rand(p["batch"], 3, p["image_size"], p["image_size"], generator=gen).to(dev) * 2 - 1
    xb = torch.rand(p["batch"], 3, p["image_size"], p["image_size"], generator=gen).to(dev) * 2 - 1
    cl = {False: (xa, xb), True: tuple(x.contiguous(memory_format=torch.channels_last) for x in (xa, xb))}
    ref, fast = ReferenceMunit(trainer), variants(trainer, setup)
    truth = first_step_losses(trainer, xa, xb, nullcontext)
    errors = {name: loss_error(first_step_losses(t, *cl[c], prec), truth) for name, (t, c, prec) in fast.items()}

    def run(t: MunitTrainer, channels_last: bool, precision):
        styles = torch.Generator().manual_seed(2)

        def step():
            with precision():
                t.step(*cl[channels_last], styles)
        return step

    styles = torch.Generator().manual_seed(2)
    paths = {"reference": lambda: ref.step(xa, xb, styles), **{n: run(*v) for n, v in fast.items()}}
    t = side_by_side(paths, dev, setup.repeats, setup.rounds)
    label = f"MUNIT train step {size} (batch {p['batch']}, {p['image_size']}px)"
    rows = [{"case": f"{label}: fastmbr vs NVlabs-style reference (fp32)", "reference s/iter": t["reference"],
             "fastmbr s/iter": t["fastmbr"], "fastmbr speed-up": t["reference"] / t["fastmbr"]}]
    for name in fast:
        if name == "fastmbr":
            continue
        precision = " (bf16 vs fp32)" if "bf16" in name else ""
        rows.append({"case": f"{label}: {name}{precision}", "s/iter": t[name],
                     "speed-up vs reference": t["reference"] / t[name], "speed-up vs fastmbr": t["fastmbr"] / t[name],
                     "first-step loss rel. error": errors[name]})
    return rows


def munit_train_cases(setup: BenchSetup, quick: bool) -> list[tuple[str, callable]]:
    """The suite's entries (registered by report.suite): one case per preset, each a list of rows."""
    return [(f"munit train {size}", lambda size=size: bench_munit_train(setup, size)) for size in PRESETS]
