"""Checks only a CUDA GPU can make: the Triton kernels compiled for the real device against their references, a
training step with no host synchronisation (``torch.cuda.set_sync_debug_mode("error")``), masked Adadelta against
PyTorch's foreach Adadelta, and bf16 autocast + ``torch.compile`` on the classifier and G.

Their CPU twins are elsewhere (tests/test_kernels.py under TRITON_INTERPRET=1, tests/test_optim.py on meta tensors,
tests/test_compile.py). Without CUDA (CI) every test here is skipped with the reason below, never silently:
``bash bench/device_check.sh`` runs them, with the GPU benchmarks, on a machine that has one.
"""

from __future__ import annotations

import pytest
import torch

from test_kernels import compare_pga, compare_worst_of_k, unambiguous_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: run `bash bench/device_check.sh` on one")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_worst_of_k_on_the_gpu_matches_the_reference(dtype):
    problems = []
    shapes = [(3, 5, 10, None), (1, 1, 43, 16), (10, 64, 43, None), (3, 256, 1000, None), (50, 32, 200, 128)]
    for seed, (k, b, c, block) in enumerate(shapes):
        logits, y = unambiguous_logits(k, b, c, dtype, seed)
        problems += compare_worst_of_k(f"{dtype} k={k} B={b} C={c}", logits.to(CUDA), y.to(CUDA), block)
    assert problems == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("signed", [True, False])
def test_triton_pga_step_on_the_gpu_matches_the_reference(dtype, signed):
    generator = torch.Generator().manual_seed(3)
    problems = []
    for shape in [(1, 1, 2), (10, 32, 8), (1, 4096, 3 * 32 * 32)]:
        delta = (torch.rand(shape, generator=generator) * 2 - 1).to(CUDA, dtype)
        grad = torch.randn(shape, generator=generator).to(CUDA, dtype)
        problems += compare_pga(f"{shape}", delta, grad, 0.05, -1.0, 1.0, signed)
    assert problems == []


def test_dispatch_runs_triton_on_cuda_tensors():
    from fastmbr.kernels import kernel_backend

    assert kernel_backend(torch.zeros(2, 3, 4, device=CUDA)) == "triton"
    assert kernel_backend(torch.zeros(2, 3, 4, device=CUDA, requires_grad=True)) == "reference"


def test_masked_adadelta_matches_pytorchs_cuda_adadelta_and_never_syncs():
    from fastmbr.engine.optim import MaskedAdadelta

    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 3, 3), (128,), (10, 128)]
    ours = [torch.randn(s, generator=generator).to(CUDA).requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt, ref = MaskedAdadelta(ours, lr=1.0, weight_decay=1e-4), torch.optim.Adadelta(theirs, lr=1.0, weight_decay=1e-4)
    for _ in range(5):
        grads = [torch.randn(s, generator=generator).to(CUDA) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.found_inf = torch.zeros((), device=CUDA)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def step_trainer(tmp_path, algo: str, k: int, compile: bool):
    """A trainer set up on the embedded MNIST (known background-colour model) and one batch on the GPU."""
    from fastmbr.config import preset_config
    from fastmbr.engine.trainer import Trainer

    cfg = preset_config("mnist", algo, "background-color")
    cfg.algo.k, cfg.data.limit, cfg.data.batch_size = k, 512, 64
    cfg.device, cfg.compile, cfg.out = "cuda", compile, str(tmp_path)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.setup()
    trainer.train_loader.set_epoch(0, 0)
    x, y = next(iter(trainer.train_loader))
    return trainer, x, y


@pytest.mark.parametrize("algo,k", [("erm", 1), ("mrt", 10), ("mda", 3), ("mat", 5), ("pgd", 5)])
def test_a_training_step_never_synchronises_with_the_host(tmp_path, algo, k):
    trainer, x, y = step_trainer(tmp_path, algo, k, compile=False)
    assert trainer.skip_on_device and trainer.autocast  # fused or masked optimizer, bf16 autocast on CUDA
    for _ in range(2):  # warm-up: lazy state (optimizer buffers, cuDNN plans) may sync once
        trainer.train_step(trainer.algo, x, y, {}, at_log=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(trainer.algo, x, y, {}, at_log=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert any(not torch.equal(p, q) for p, q in zip(trainer.model.parameters(), before))
    assert trainer.skipped.read()[0] == 0


def test_compiled_bf16_step_trains_like_the_eager_fp32_step(tmp_path):
    """The same first batches through the compiled, channels-last, bf16 path and an eager fp32 one: the losses
    agree to bf16 precision and both fall."""
    losses = {}
    for compiled in (True, False):
        trainer, x, y = step_trainer(tmp_path / str(compiled), "mda", 3, compile=compiled)
        trainer.autocast = compiled
        torch.manual_seed(0)
        seen = []
        for _ in range(20):
            trainer.train_step(trainer.algo, x, y, {}, at_log=False)
            seen.append(trainer.meter.read(trainer.dist)["loss"])
            trainer.meter.reset()
        losses[compiled] = seen
    assert losses[True][-1] < 0.5 * losses[True][0] and losses[False][-1] < 0.5 * losses[False][0]
    assert abs(losses[True][0] - losses[False][0]) < 0.05 * losses[False][0]


def test_compiled_munit_expand_in_bf16_matches_eager_fp32():
    from fastmbr.variation.munit import MunitVariation, arch_preset
    from fastmbr.variation.resolve import compile_variation

    torch.manual_seed(0)
    g = MunitVariation(arch_preset("base"), 64).to(CUDA).eval().requires_grad_(False)
    x = torch.rand(8, 3, 64, 64, device=CUDA)
    delta = g.sample_delta(8, 3)
    eager = g.expand(x, delta)
    fast = compile_variation(g, "default")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast.expand(x.contiguous(memory_format=torch.channels_last), delta)
    assert out.shape == eager.shape == (3, 8, 3, 64, 64)
    assert (out.float() - eager).abs().mean() < 2e-2


@pytest.mark.parametrize("backend,kind", [("tensor", "memory"), ("torch", "memory"), ("torch", "files"),
                                          ("dali", "files"), ("ffcv", "memory"), ("ffcv", "files"),
                                          ("nvjpeg", "files")])
def test_every_loader_delivers_the_cpu_loaders_samples_onto_the_gpu(tmp_path, monkeypatch, backend, kind):
    """The loader contract on a CUDA device (pinned copies, DALI's mixed decode, FFCV's ToDevice, nvJPEG): the same
    samples in the same order as the CPU loader, as float32 in [0, 1] and int64 labels on the GPU, channels-last
    when asked. A backend whose package the machine lacks is reported as skipped, by name."""
    from test_loaders import SIDE, make, sample_ids, write_flat_tree

    from fastmbr.pipelines.loaders.dali import dali_available
    from fastmbr.pipelines.loaders.ffcv import ffcv_available

    if (backend == "dali" and not dali_available()) or (backend == "ffcv" and not ffcv_available()):
        pytest.skip(f"{backend} is not installed on this GPU machine")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tree = write_flat_tree(tmp_path / "tree")
    on_gpu = [b for b in make(tree, backend, kind, device="cuda", shuffle=True, seed=7, channels_last=True)]
    on_cpu = [b for b in make(tree, backend, kind, device="cpu", shuffle=True, seed=7)]
    assert [len(y) for _, y in on_gpu] == [len(y) for _, y in on_cpu]
    for (x, y), (cx, cy) in zip(on_gpu, on_cpu):
        assert x.device.type == y.device.type == "cuda" and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, SIDE, SIDE) and x.is_contiguous(memory_format=torch.channels_last)
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
        assert sample_ids(x.cpu()) == sample_ids(cx) and torch.equal(y.cpu(), cy)


def test_nvjpeg_decodes_a_jpeg_batch_on_the_gpu_like_libjpeg_turbo_on_the_cpu(tmp_path, monkeypatch):
    """torchvision's nvJPEG path, batched, with no file left to Pillow: the torch loader's windows, pixels within
    decoder rounding of the CPU decode."""
    from test_loaders import epoch

    from fastmbr.bench.loading import write_jpeg_tree
    from fastmbr.pipelines.loaders import LoaderConfig, build_loader, nvjpeg

    files = write_jpeg_tree(tmp_path, 24, 64, workers=2)
    monkeypatch.setattr(nvjpeg, "pillow_or_none", lambda path, device: pytest.fail(f"Pillow decoded {path}"))
    settings = dict(backend="nvjpeg", batch_size=8, shuffle=True, seed=1, augment="rrc-flip", image_size=48)
    on_gpu = epoch(build_loader(files, LoaderConfig(device="cuda", **settings)), 2)
    on_cpu = epoch(build_loader(files, LoaderConfig(device="cpu", **settings)), 2)
    for (x, y), (cx, cy) in zip(on_gpu, on_cpu):
        assert x.device.type == "cuda" and torch.equal(y.cpu(), cy)
        assert (x.cpu() - cx).abs().mean() < 0.02
