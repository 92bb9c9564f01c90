"""Numeric settings checked before anything is written, and training progress checked after every epoch.

A degenerate value (λ = NaN, ``--epochs 0``, ``--lr -1``, ``--log-every 0``, ``--image-size 0``, ...) is a
FastmbrError naming the flag and the value before the run folder exists, never exit 0 with an untrained model or
a traceback from deep inside torch. Whatever only the data can tell (an empty validation split, an epoch that took
no step, an epoch whose every step was skipped as non-finite) is refused as soon as it is known.
"""

from __future__ import annotations

import math
import os

from fastmbr.errors import FastmbrError

MIN_IMAGE_SIZE = 8  # below this the classifiers' pooling leaves nothing to classify


def finite(value: float, flag: str, low: float | None = None, strict: bool = False,
           high: float | None = None) -> None:
    """``value`` is a finite number, >= low (> low when ``strict``) and < high when given."""
    bound = f" and > {low}" if strict and low is not None else f" and >= {low}" if low is not None else ""
    bound += f" and < {high}" if high is not None else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or (
            low is not None and (value <= low if strict else value < low)) or (high is not None and value >= high):
        raise FastmbrError(f"{flag} must be a finite number{bound}, got {value!r}")


def at_least(value: int | None, flag: str, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise FastmbrError(f"{flag} must be an integer >= {low}, got {value!r}")


def validate_run(cfg, options) -> None:
    """Every numeric setting of a classifier run (RunConfig + TrainOptions)."""
    d, a, o = cfg.data, cfg.algo, cfg.optim
    at_least(o.epochs, "--epochs", 1)
    at_least(o.warmup_epochs, "--warmup-epochs", 0)
    finite(o.lr, "--lr", 0.0, strict=True)
    if o.lr_end is not None:
        finite(o.lr_end, "lr_end", 0.0, strict=True)
    finite(o.momentum, "momentum", 0.0, high=1.0)
    finite(o.weight_decay, "weight_decay", 0.0)
    at_least(a.k, "-k", 1, optional=True)
    if a.lam is not None:
        finite(a.lam, "--lambda", 0.0)
    if a.alpha is not None:
        finite(a.alpha, "--alpha", 0.0, strict=True)
    at_least(d.batch_size, "--batch-size", 1)
    at_least(d.eval_batch_size, "eval_batch_size", 1)
    at_least(d.num_workers, "num_workers", 0)
    at_least(d.image_size, "--image-size", MIN_IMAGE_SIZE, optional=True)
    at_least(d.limit, "--limit", 2, optional=True)
    at_least(d.max_resolution, "--max-resolution", 1, optional=True)
    finite(d.val_fraction, "val_fraction", 0.0, strict=True, high=1.0)
    at_least(cfg.seed, "--seed", 0)
    if cfg.seed >= 2**32:
        raise FastmbrError(f"--seed must be < 2**32, got {cfg.seed}")
    at_least(cfg.log_every, "--log-every", 1)
    at_least(cfg.checkpoint_every, "--checkpoint-every", 0)
    at_least(cfg.keep_checkpoints, "--keep-checkpoints", 1)
    at_least(cfg.max_nonfinite, "--max-nonfinite", 0)
    at_least(options.accumulate, "--accumulate", 1)


def check_splits(domains, limit: int | None) -> None:
    """Training and validation splits of A both hold images (``--limit`` can leave the validation split empty)."""
    hint = f" (--limit {limit} is too small)" if limit is not None else ""
    if len(domains.train) == 0:
        raise FastmbrError(f"domain A's training split is empty{hint}")
    if len(domains.val) == 0:
        raise FastmbrError(f"domain A's validation split is empty{hint}: model selection needs it")


def check_epoch(epoch: int, steps: int, skipped: int, run_dir) -> None:
    """An epoch that took no step, or whose every step was skipped as non-finite, trained nothing: stop."""
    if steps == 0:
        raise FastmbrError(f"epoch {epoch + 1} took no training step (empty training set?); stopped")
    if skipped >= steps:
        raise FastmbrError(f"every one of the {steps} step(s) of epoch {epoch + 1} was skipped as NaN/inf; "
                           f"stopped. The last good checkpoint in {run_dir} is intact; try a lower --lr")


def validate_munit(cfg) -> None:
    """The numeric settings of ``model train`` (a resolved MunitTrainConfig)."""
    finite(cfg.lr, "--lr", 0.0, strict=True)
    at_least(cfg.style_dim, "--style-dim", 1)
    finite(cfg.gamma, "gamma", 0.0, strict=True)
    finite(cfg.beta1, "beta1", 0.0, high=1.0)
    finite(cfg.beta2, "beta2", 0.0, high=1.0)
    finite(cfg.weight_decay, "weight_decay", 0.0)
    for name in ("recon_x", "recon_c", "recon_s", "gan"):
        finite(getattr(cfg, name), name, 0.0)
    finite(cfg.recon_x_cyc, "--cycle", 0.0)
    finite(cfg.bound, "bound", 0.0, strict=True)
    at_least(cfg.seed, "--seed", 0)


EXPANDING = ("mrt", "mda")  # algorithms that hold k variations of every image of a batch at once


def available_memory(device) -> int:
    """Bytes free for tensors on ``device``: CUDA's free memory, or the host's MemAvailable."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def human(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_expansion_memory(algo: str, k: int, batch: int, channels: int, size: int, device) -> None:
    """MRT and MDA expand a batch of B images into k·B variations at once: refuse, before allocating, a k·B whose
    float32 images alone (G's output and the classifier's normalised copy: 2 × 4 bytes per value) exceed the
    memory available, saying how much they need."""
    if algo not in EXPANDING:
        return
    need = 2 * 4 * k * batch * channels * size * size
    have = available_memory(device)
    if need > have:
        raise FastmbrError(f"-k {k} × a batch of {batch} = {k * batch:,} images of {channels}×{size}×{size} need at "
                           f"least {human(need)} on {device} for the images alone, but {human(have)} is available; "
                           f"lower -k or --batch-size, or raise --accumulate")


def validate_model_train_flags(image_size: int | None, iters: int | None, lr: float | None,
                               lr_step: int | None) -> None:
    """``model train`` flags whose 0 would otherwise silently mean "the preset's value" (or be ignored)."""
    at_least(image_size, "--image-size", MIN_IMAGE_SIZE, optional=True)
    at_least(iters, "--iters", 1, optional=True)
    at_least(lr_step, "--lr-step", 1, optional=True)
    if lr is not None:
        finite(lr, "--lr", 0.0, strict=True)
