"""Benchmark stages: G.expand against the naive loop and the reference, decode-chunk tuning, classifier and full
training steps per algorithm × k against the reference path, loaders, kernels. Every ratio compares two paths
timed in the same process, on the same inputs and device, interleaved to share the machine's noise.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from fastmbr.algorithms import build_algorithm
from fastmbr.bench.flops import flops_of, throughput
from fastmbr.bench.kernels import seconds_per_call
from fastmbr.bench.reference import REFERENCE_LOSSES, half_dtype, reference_generate, reference_half
from fastmbr.models import build_classifier
from fastmbr.variation.munit.networks import Generator, MunitArch, arch_preset
from fastmbr.variation.munit.variation import MunitVariation


@dataclass
class BenchSetup:
    device: torch.device
    size: str = "reference-tiny"  # MUNIT preset: tiny | base | reference-tiny (the reference code's small MUNIT)
    image_size: int = 32
    batch: int = 64
    arch: str = "cnn"
    repeats: int = 3
    rounds: int = 3
    compile: bool = False
    amp: bool = False  # G.expand and the classifier step in bf16 autocast (amp vs amp for G.expand)


def fast_precision(setup: BenchSetup, amp: bool | None = None):
    """The autocast context of fastmbr's path: bf16, as ``fastmbr train`` on CUDA (and CPUs with AMX/AVX512-BF16)."""
    amp = setup.amp if amp is None else amp
    return torch.autocast(setup.device.type, dtype=torch.bfloat16) if amp else nullcontext()


def reference_precision(setup: BenchSetup, amp: bool):
    """The reference code's precision: fp32, or its ``--half-prec`` (apex O1 on the classifier, here ``autocast`` in
    fp16 on CUDA and bf16 on a CPU)."""
    return torch.autocast(setup.device.type, dtype=half_dtype(setup.device)) if amp else nullcontext()


def precision_label(amp: bool) -> str:
    """Both paths at one precision: ``fp32/fp32``, or ``amp/amp`` (the reference with G in half precision)."""
    return "amp/amp" if amp else "fp32/fp32"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(paths: dict, device: torch.device, repeats: int, rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each path, the paths interleaved round by round."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            times[name].append(seconds_per_call(fn, device, repeats, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


# The reference code's small MUNIT (dim 64, one downsampling, one residual block, style dim 2), as profiled in
# the fast-path issue: both paths run THIS architecture in the CPU comparison, so only the work per step differs.
REFERENCE_TINY = MunitArch(channels=3, style_dim=2, dim=64, n_downsample=1, n_res=1, mlp_dim=256,
                           first_kernel=7, up_kernel=5, style_downsample=4)


def bench_arch(size: str) -> MunitArch:
    return REFERENCE_TINY if size == "reference-tiny" else arch_preset(size)


def make_generator(setup: BenchSetup) -> tuple[Generator, MunitVariation]:
    """A randomly initialised MUNIT and the MunitVariation sharing its weights (speed does not need training)."""
    torch.manual_seed(0)
    arch = bench_arch(setup.size)
    gen = Generator(arch).to(setup.device).eval().requires_grad_(False)
    gen.decoder.subpixel = False  # the reference code upsamples, then convolves at full resolution
    G = MunitVariation(arch, setup.image_size).to(setup.device)
    G.content_encoder.load_state_dict(gen.content.state_dict())
    G.decoder.load_state_dict(gen.decoder.state_dict())
    return gen, G.freeze()


def maybe_compile(G: MunitVariation, setup: BenchSetup) -> MunitVariation:
    if setup.compile:
        G.content_encoder = torch.compile(G.content_encoder, dynamic=False)
        G.decoder = torch.compile(G.decoder, dynamic=False)
    return G


def bench_expand(setup: BenchSetup, k: int) -> dict:
    """k variations of a batch: fastmbr's expand vs a loop of forward calls vs the reference (re-encode per draw)."""
    gen, G = make_generator(setup)
    G = maybe_compile(G, setup)
    ref_gen = reference_half(gen, setup.device) if setup.amp else gen
    x = torch.rand(setup.batch, 3, setup.image_size, setup.image_size, device=setup.device)
    delta = G.sample_delta(setup.batch, k)
    def fast(fn):
        def run():
            with fast_precision(setup):
                return fn()
        return run

    with torch.no_grad():
        t = side_by_side({
            "reference": lambda: [reference_generate(ref_gen, x, delta[i]) for i in range(k)],
            "loop": fast(lambda: [G(x, delta[i]) for i in range(k)]),
            "expand": fast(lambda: G.expand(x, delta)),
        }, setup.device, setup.repeats, setup.rounds)
    images = k * setup.batch
    precision = " (amp/amp: bf16 autocast vs G in half precision)" if setup.amp else ""
    return {"case": f"G.expand k={k}{precision}", "precision": precision_label(setup.amp),
            **_rates(t, images, baseline="reference")}


def tune_decode_chunk(setup: BenchSetup, k: int) -> dict:
    """Images per decoder call: the fastest chunk for this device (the setting expand uses)."""
    _, G = make_generator(setup)
    G = maybe_compile(G, setup)
    x = torch.rand(setup.batch, 3, setup.image_size, setup.image_size, device=setup.device)
    delta = G.sample_delta(setup.batch, k)
    chunks = sorted({setup.batch * m for m in (1, 2, 4) if setup.batch * m <= k * setup.batch} | {k * setup.batch})
    paths = {}
    for chunk in chunks:
        def run(chunk=chunk):
            G.decode_chunk = chunk
            with torch.no_grad():
                return G.expand(x, delta)
        paths[f"chunk={chunk}"] = run
    t = side_by_side(paths, setup.device, setup.repeats, setup.rounds)
    best = min(t, key=t.get)
    return {"case": f"decode chunk k={k}", "best": best,
            **{f"{name} images/s": k * setup.batch / s for name, s in t.items()}}


def bench_full_step(setup: BenchSetup, algo_name: str, k: int, amp: bool = False) -> dict:
    """One optimisation step (G, selection/augmentation, classifier forward/backward, update) per path, both paths at
    one precision: fp32/fp32, or amp/amp (fastmbr in bf16 autocast; the reference under autocast with G in half
    precision, as its ``--half-prec`` scripts)."""
    gen, G = make_generator(setup)
    ref_gen = reference_half(gen, setup.device) if amp else gen
    G = maybe_compile(G, setup)
    torch.manual_seed(0)
    fast_model = build_classifier(setup.arch, 10, image_size=setup.image_size).to(setup.device)
    ref_model = build_classifier(setup.arch, 10, image_size=setup.image_size).to(setup.device)
    ref_model.load_state_dict(fast_model.state_dict())
    fast_model = fast_model.to(memory_format=torch.channels_last)  # the engine's default layout
    fast_opt = torch.optim.Adadelta(fast_model.parameters())
    fast_step_model = torch.compile(fast_model) if setup.compile else fast_model
    ref_opt = torch.optim.Adadelta(ref_model.parameters())
    algo = build_algorithm(algo_name, k=k)
    x = torch.rand(setup.batch, 3, setup.image_size, setup.image_size, device=setup.device)
    y = torch.randint(0, 10, (setup.batch,), device=setup.device)

    def step(model, opt, loss_fn, precision=nullcontext):
        opt.zero_grad(set_to_none=True)
        with precision():
            loss = loss_fn()
        loss.backward()
        opt.step()

    paths = {
        "reference": lambda: step(ref_model, ref_opt, lambda: REFERENCE_LOSSES[algo_name](ref_model, ref_gen, x, y, k),
                                  lambda: reference_precision(setup, amp)),
        "fastmbr": lambda: step(fast_model, fast_opt, lambda: algo.loss(fast_step_model, G, x, y)["loss"],
                                lambda: fast_precision(setup, amp)),
    }
    t = side_by_side(paths, setup.device, setup.repeats, setup.rounds)
    return {"case": f"{algo_name.upper()}-{k} full step ({setup.arch}, MUNIT {setup.size}, {setup.image_size}px, "
                    f"{precision_label(amp)})",
            "precision": precision_label(amp),
            **_rates(t, setup.batch, baseline="reference"),
            **throughput(flops_of(paths["fastmbr"]), t["fastmbr"], setup.device, "fastmbr"),
            **throughput(flops_of(paths["reference"]), t["reference"], setup.device, "reference")}


def erm_batch(setup: BenchSetup) -> int:
    """ERM's batch: 8× the model-based batch on a GPU (256 for ResNet-50, a throughput batch), the same on a CPU."""
    return setup.batch * (8 if setup.device.type == "cuda" else 1)


def engine_optimizer(arch: str, model: nn.Module) -> torch.optim.Optimizer:
    """What ``fastmbr train`` steps with: masked Adadelta for the paper's CNN, fused SGD for ResNets; both skip a
    non-finite step on the device, so the bench hands them ``found_inf`` as the trainer does."""
    from fastmbr.config import preset_config
    from fastmbr.engine.optim import build_optimizer

    opt = build_optimizer(preset_config("gtsrb" if arch == "cnn" else "imagenet"), model.parameters())
    opt.found_inf = torch.zeros((), device=next(model.parameters()).device)
    return opt


def engine_model(setup: BenchSetup, plain: nn.Module) -> nn.Module:
    """A copy of ``plain`` laid out as the engine trains it: channels-last, compiled under ``--compile``."""
    fast = build_classifier(setup.arch, 10, image_size=setup.image_size).to(setup.device)
    fast.load_state_dict(plain.state_dict())
    return fast.to(memory_format=torch.channels_last)


def training_step(model: nn.Module, opt: torch.optim.Optimizer, precision=nullcontext):
    """``step(x, y)``: one cross-entropy step of ``model`` (the classifier step every ERM case times)."""
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with precision():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def engine_step(setup: BenchSetup):
    """The engine's ERM step (channels-last, the engine's optimizer, bf16 under ``--amp``, compiled under
    ``--compile``) on a fresh classifier."""
    torch.manual_seed(0)
    fast = engine_model(setup, build_classifier(setup.arch, 10, image_size=setup.image_size).to(setup.device))
    model = torch.compile(fast) if setup.compile else fast
    return training_step(model, engine_optimizer(setup.arch, fast), lambda: fast_precision(setup))


def bench_classifier_step(setup: BenchSetup) -> dict:
    """ERM's step: plain eager fp32 (contiguous, plain Adadelta) against the engine's path (channels-last, the
    engine's optimizer, bf16 under ``--amp``, compiled under ``--compile``)."""
    torch.manual_seed(0)
    batch = erm_batch(setup)
    plain = build_classifier(setup.arch, 10, image_size=setup.image_size).to(setup.device)
    fast = engine_model(setup, plain)
    fast_step_model = torch.compile(fast) if setup.compile else fast
    plain_step = training_step(plain, torch.optim.Adadelta(plain.parameters()))
    fast_step = training_step(fast_step_model, engine_optimizer(setup.arch, fast), lambda: fast_precision(setup))
    x = torch.rand(batch, 3, setup.image_size, setup.image_size, device=setup.device)
    x_fast = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=setup.device)
    paths = {"eager fp32": lambda: plain_step(x, y), "fastmbr": lambda: fast_step(x_fast, y)}
    t = side_by_side(paths, setup.device, setup.repeats, setup.rounds)
    precision = ", bf16" if setup.amp else ""
    return {"case": f"classifier step, ERM ({setup.arch}, {setup.image_size}px, batch {batch}{precision})",
            **_rates(t, batch, baseline="eager fp32"),
            **throughput(flops_of(paths["fastmbr"]), t["fastmbr"], setup.device, "fastmbr")}


def bench_loader(backend: str, data, setup: BenchSetup) -> dict:
    from fastmbr.pipelines.loaders import LoaderConfig, build_loader

    loader = build_loader(data, LoaderConfig(batch_size=setup.batch, augment="crop-flip",
                                             image_size=setup.image_size, device=setup.device, backend=backend))
    start, n = time.perf_counter(), 0
    for _, y in loader:
        n += y.shape[0]
    sync(setup.device)
    return {"case": f"loader {backend}", "images/s": n / (time.perf_counter() - start), "images": n}


def _rates(t: dict[str, float], images: int, baseline: str) -> dict:
    out = {f"{name} images/s": images / s for name, s in t.items()}
    for name, s in t.items():
        if name != baseline:
            out[f"{name} speed-up"] = t[baseline] / s
    return out
