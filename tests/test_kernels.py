"""Kernels: the Triton paths against their PyTorch references, and the dispatch rules.

There is no GPU here, so the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``). That variable
must be set before Triton is imported, so the comparisons run in one child process: this file executed as a script,
which runs every ``case_*`` function below and prints ``{case: [mismatch, ...]}`` as JSON. Each pytest test then
asserts that its case reported no mismatch. A second child compiles both kernels for sm_90 (no GPU needed), since
the interpreter accepts code real compilation rejects. The in-process tests cover the reference and the dispatch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest
import torch
import torch.nn.functional as F

import fastmbr.kernels as kernels
from fastmbr.errors import FastmbrError
from fastmbr.kernels.pga import pga_step_reference
from fastmbr.kernels.worst_of_k import worst_of_k_reference

LOSS_TOLERANCE = {torch.float32: dict(rtol=1e-6, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=0.0)}
LOSS_TOLERANCE[torch.float16] = LOSS_TOLERANCE[torch.bfloat16]


# ---------------------------------------------------------------- helpers shared by the child process


def compare_worst_of_k(name: str, logits: torch.Tensor, y: torch.Tensor, block_c: int | None = None) -> list[str]:
    """Mismatches between the Triton kernel and the reference on one input, as readable strings."""
    from fastmbr.kernels.worst_of_k import worst_of_k_triton

    loss, index = worst_of_k_triton(logits, y, block_c=block_c)
    loss_ref, index_ref = worst_of_k_reference(logits, y)
    problems = []
    if loss.dtype != torch.float32 or tuple(loss.shape) != tuple(loss_ref.shape):
        problems.append(f"{name}: loss {loss.dtype} {tuple(loss.shape)}, expected fp32 {tuple(loss_ref.shape)}")
    elif not torch.allclose(loss, loss_ref, **LOSS_TOLERANCE[logits.dtype]):
        problems.append(f"{name}: loss off by up to {(loss - loss_ref).abs().max().item():.3g}")
    if index.dtype != torch.int64 or not torch.equal(index, index_ref):
        problems.append(f"{name}: index {index.tolist()} ({index.dtype}), expected {index_ref.tolist()}")
    return problems


def unambiguous_logits(k: int, b: int, c: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose k losses per sample are at least ~0.5 apart, so low-precision rounding cannot flip the argmax.

    Each variation lowers the target logit by a distinct multiple of 1.5 (a random order per sample).
    """
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, b, c, generator=generator) * 0.5
    y = torch.randint(0, c, (b,), generator=generator)
    order = torch.stack([torch.randperm(k, generator=generator) for _ in range(b)], dim=1).float()
    logits[:, torch.arange(b), y] = 4.0 - 1.5 * order
    return logits.to(dtype), y


def argmax_margin(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Smallest gap between the largest and second-largest reference loss over k (inf when k == 1)."""
    loss, _ = worst_of_k_reference(logits, y)
    if loss.shape[0] == 1:
        return float("inf")
    top2 = loss.topk(2, dim=0).values
    return (top2[0] - top2[1]).min().item()


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` at each element's magnitude (as fp32), e.g. 2**-7 for bf16 values in [1, 2)."""
    _, exponent = torch.frexp(x.float())
    return torch.finfo(dtype).eps * torch.pow(2.0, exponent.float() - 1)


def pga_ulps(dtype: torch.dtype, signed: bool) -> int:
    """Units in the last place the Triton PGA step may differ from the reference by, and why.

    The signed step is exact (α·±1 needs no rounding) and so is the clamp (the bounds are rounded to δ's dtype).
    A plain step may round differently (PyTorch's CPU add_ uses a fused multiply-add): 1 ulp of the largest
    operand, since the product's rounding error survives cancellation. And Triton 3.8's interpreter
    casts fp32 → bf16 by truncation where GPUs round to nearest even: 1 more ulp for bf16, never outside the box.
    """
    return (0 if signed else 1) + (1 if dtype == torch.bfloat16 else 0)


def compare_pga(name: str, delta: torch.Tensor, grad, alpha, low, high, signed: bool) -> list[str]:
    """Run both PGA paths on copies of δ; check equality, in-placeness and that δ ends inside the box."""
    from fastmbr.kernels.pga import pga_step_triton

    before = delta.float().clone()
    expected = pga_step_reference(delta.clone(), grad, alpha, low, high, signed)
    pointer = delta.data_ptr()
    result = pga_step_triton(delta, grad, alpha, low, high, signed)
    problems = []
    if result is not delta or delta.data_ptr() != pointer:
        problems.append(f"{name}: not updated in place")
    gap = (result.float() - expected.float()).abs()
    step = grad.float().abs() * alpha
    magnitude = torch.stack(torch.broadcast_tensors(before.abs(), step, expected.float().abs(), result.float().abs()))
    allowed = pga_ulps(delta.dtype, signed) * ulp(magnitude.amax(0), delta.dtype)
    if not bool((gap <= allowed).all()):
        problems.append(f"{name}: differs from the reference by up to {gap.max().item():.3g}")
    low_d, high_d = torch.as_tensor(low).to(delta.dtype), torch.as_tensor(high).to(delta.dtype)
    if not bool(((result >= low_d) & (result <= high_d)).all()):
        problems.append(f"{name}: δ left the box")
    return problems


# ---------------------------------------------------------------- cases run under TRITON_INTERPRET=1


def case_worst_of_k_fp32_shapes() -> list[str]:
    """B = 1, k = 1, C below, equal to and far above the block, with forced small blocks for streaming."""
    shapes = [(3, 5, 10, None), (1, 1, 43, 16), (4, 1, 43, None), (1, 6, 1000, None), (3, 4, 1000, 128), (2, 3, 16, 16)]
    problems = []
    for seed, (k, b, c, block) in enumerate(shapes):
        generator = torch.Generator().manual_seed(seed)
        logits = torch.randn(k, b, c, generator=generator) * 3
        y = torch.randint(0, c, (b,), generator=generator)
        problems += compare_worst_of_k(f"k={k} B={b} C={c} block={block}", logits, y, block)
    return problems


def _half_precision_cases(dtype: torch.dtype) -> list[str]:
    problems = []
    for seed, (k, b, c, block) in enumerate([(4, 6, 10, None), (3, 2, 1000, 256), (1, 1, 43, 16)]):
        logits, y = unambiguous_logits(k, b, c, dtype, seed)
        if argmax_margin(logits, y) < 0.1:
            problems.append(f"{dtype} k={k} B={b} C={c}: test input is ambiguous, fix the generator")
        problems += compare_worst_of_k(f"{dtype} k={k} B={b} C={c} block={block}", logits, y, block)
    return problems


def case_worst_of_k_bf16() -> list[str]:
    return _half_precision_cases(torch.bfloat16)


def case_worst_of_k_fp16() -> list[str]:
    return _half_precision_cases(torch.float16)


def case_worst_of_k_ties() -> list[str]:
    """Duplicate worst rows must report the smallest k; all-equal rows must report 0."""
    problems = []
    for dtype in (torch.float32, torch.bfloat16):
        logits, y = unambiguous_logits(5, 4, 43, dtype, seed=7)
        worst = worst_of_k_reference(logits, y)[1]
        tied = logits.clone()
        tied[4] = tied[worst, torch.arange(4)]
        tied[3] = tied[worst, torch.arange(4)]
        problems += compare_worst_of_k(f"{dtype} duplicated worst row", tied, y, 16)
        index = kernels.worst_of_k(tied, y)[1]
        if not torch.equal(index, torch.minimum(worst, torch.full_like(worst, 3))):
            problems.append(f"{dtype} duplicated worst row: index {index.tolist()}, worst rows were {worst.tolist()}")
        same = logits[:1].expand(3, -1, -1)
        problems += compare_worst_of_k(f"{dtype} identical rows", same, y)
        if kernels.worst_of_k(same, y)[1].any():
            problems.append(f"{dtype} identical rows: index is not all 0")
    return problems


def case_worst_of_k_non_contiguous() -> list[str]:
    generator = torch.Generator().manual_seed(3)
    transposed = (torch.randn(6, 3, 50, generator=generator) * 2).transpose(0, 1)
    strided = torch.randn(3, 6, 100, generator=generator)[..., ::2]
    y = torch.randint(0, 50, (12,), generator=generator)[::2]
    problems = compare_worst_of_k("transposed", transposed, y, 16) + compare_worst_of_k("strided", strided, y)
    return problems + compare_worst_of_k("int32 labels", strided, y.int())


def case_worst_of_k_bad_labels() -> list[str]:
    from fastmbr.kernels.worst_of_k import worst_of_k_triton

    problems = []
    logits = torch.randn(2, 3, 10)
    for name, y in [("label 10 of 10", torch.tensor([0, 10, 2])), ("label -1", torch.tensor([0, -1, 2]))]:
        try:
            worst_of_k_triton(logits, y)
            problems.append(f"{name}: no FastmbrError")
        except FastmbrError:
            pass
    return problems


def case_dispatch_interpreted() -> list[str]:
    """Under the interpreter the dispatch picks Triton for supported dtypes, and its results are the kernel's."""
    problems = []
    if kernels.kernel_backend(torch.zeros(1)) != "triton":
        problems.append("fp32 CPU tensor under TRITON_INTERPRET=1 did not pick triton")
    if kernels.kernel_backend(torch.zeros(1, dtype=torch.float64)) != "reference":
        problems.append("fp64 tensor picked triton")
    logits, y = unambiguous_logits(3, 4, 20, torch.float32, seed=11)
    loss, index = kernels.worst_of_k(logits, y)
    loss_ref, index_ref = worst_of_k_reference(logits, y)
    if not (torch.allclose(loss, loss_ref, atol=1e-5) and torch.equal(index, index_ref)):
        problems.append("dispatched worst_of_k differs from the reference")
    os.environ["FASTMBR_KERNELS"] = "reference"
    if kernels.kernel_backend(torch.zeros(1)) != "reference":
        problems.append("FASTMBR_KERNELS=reference ignored under TRITON_INTERPRET=1")
    del os.environ["FASTMBR_KERNELS"]
    return problems


def _box(q: int) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.linspace(-1.0, 0.2, q)
    return low, low + torch.linspace(0.1, 1.5, q)


def case_pga_per_coordinate_box() -> list[str]:
    problems = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for signed in (True, False):
            for shape in [(3, 7, 5), (4, 70, 5), (1, 1, 1)]:
                generator = torch.Generator().manual_seed(len(problems) + shape[1])
                low, high = _box(shape[-1])
                delta = (torch.rand(shape, generator=generator) * 2 - 1).to(dtype)
                grad = torch.randn(shape, generator=generator)
                grad.view(-1)[::7] = 0.0
                name = f"{dtype} signed={signed} {shape}"
                problems += compare_pga(name, delta, grad, 0.3, low, high, signed)
    return problems


def case_pga_scalar_box() -> list[str]:
    problems = []
    for dtype in (torch.float32, torch.bfloat16):
        for signed in (True, False):
            generator = torch.Generator().manual_seed(5)
            delta = torch.randn(2, 9, 4, generator=generator).to(dtype)
            grad = torch.randn(2, 9, 4, generator=generator).to(dtype)
            low, high = torch.tensor(-0.25), torch.tensor(0.5)
            problems += compare_pga(f"{dtype} signed={signed} scalar box", delta, grad, 0.1, low, high, signed)
    return problems


def case_pga_non_contiguous_and_broadcast() -> list[str]:
    generator = torch.Generator().manual_seed(9)
    transposed = torch.rand(5, 4, 3, generator=generator).transpose(0, 1)
    grad = torch.randn(4, 5, 3, generator=generator)
    low, high = _box(3)
    problems = compare_pga("transposed δ", transposed, grad, 0.2, low, high, True)
    per_sample_low = torch.linspace(-0.5, 0.0, 4).reshape(4, 1, 1).expand(4, 5, 1)
    delta = torch.rand(4, 5, 3, generator=generator)
    return problems + compare_pga("[B,1,1] box", delta, grad, 0.2, per_sample_low, torch.tensor(1.0), False)


def case_pga_nan_gradient_and_python_float_bounds() -> list[str]:
    """A NaN gradient on both paths (the kernel once clamped δ to the upper bound): no step when signed
    (torch.sign(NaN) is 0), NaN in δ for a raw step; both paths take Python-float bounds, as documented."""
    from fastmbr.kernels.pga import pga_step_triton

    problems = []
    for dtype in (torch.float32, torch.bfloat16):
        for signed in (True, False):
            generator = torch.Generator().manual_seed(13)
            delta = (torch.rand(3, 8, 4, generator=generator) - 0.5).to(dtype)
            grad = torch.randn(3, 8, 4, generator=generator)
            grad.view(-1)[::5] = float("nan")
            name = f"{dtype} signed={signed}"
            for bounds in [(torch.tensor(-0.25), torch.tensor(0.5)), (-0.25, 0.5)]:
                expected = pga_step_reference(delta.clone(), grad, 0.1, *bounds, signed)
                result = pga_step_triton(delta.clone(), grad, 0.1, *bounds, signed)
                kind = type(bounds[0]).__name__
                want_nan = torch.zeros_like(grad, dtype=torch.bool) if signed else grad.isnan()
                if not torch.equal(expected.isnan(), want_nan):
                    problems.append(f"{name} {kind} bounds: the reference's NaN are not where expected")
                unmoved = delta.float().clamp(-0.25, 0.5).to(dtype)[grad.isnan()]  # only the projection applies
                if signed and not torch.equal(expected[grad.isnan()], unmoved):
                    problems.append(f"{name} {kind} bounds: a NaN gradient moved δ under the signed step")
                if not torch.equal(result.isnan(), expected.isnan()):
                    problems.append(f"{name} {kind} bounds: NaN in {int(result.isnan().sum())} kernel elements, "
                                    f"{int(expected.isnan().sum())} reference ones")
                finite = ~expected.isnan()  # within pga_ulps: FMA and the interpreter's bf16 truncation
                tolerance = pga_ulps(dtype, signed) * torch.finfo(dtype).eps
                if not torch.allclose(result[finite].float(), expected[finite].float(), rtol=0, atol=tolerance):
                    problems.append(f"{name} {kind} bounds: finite elements differ")
    return problems


def run_interpreted_cases() -> dict[str, list[str]]:
    results = {}
    for name, case in sorted(globals().items()):
        if name.startswith("case_"):
            try:
                results[name] = case()
            except Exception:
                results[name] = [traceback.format_exc()]
    return results


INTERPRETED_CASES = sorted(name for name in dir() if name.startswith("case_"))


# ---------------------------------------------------------------- compiled for a GPU, without one


def compile_for_hopper() -> dict[str, str]:
    """Compile both kernels through Triton's full pipeline (down to ptxas) for sm_90; returns each one's PTX.

    The interpreter runs kernels as NumPy and accepts things real compilation rejects (a loop-carried variable
    changing type, for one), so this is the check that the GPU path at least builds. It needs no GPU.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastmbr.kernels.pga import _pga_kernel
    from fastmbr.kernels.worst_of_k import _worst_of_k_kernel

    ints = dict.fromkeys(["K", "B", "C", "row_stride"], "i32")
    worst = ASTSource(
        fn=_worst_of_k_kernel(),
        signature={"logits_ptr": "*bf16", "y_ptr": "*i64", "loss_ptr": "*fp32", "index_ptr": "*i64", **ints}
        | {"BLOCK_C": "constexpr"},
        constexprs={"BLOCK_C": 1024},
    )
    pointers = dict.fromkeys(["grad_ptr", "low_ptr", "high_ptr"], "*fp32")
    pga = ASTSource(
        fn=_pga_kernel(),
        signature={"delta_ptr": "*bf16", **pointers, "alpha": "fp32"}
        | dict.fromkeys(["n", "low_len", "high_len"], "i32")
        | {"SIGNED": "constexpr", "BLOCK": "constexpr"},
        constexprs={"SIGNED": False, "BLOCK": 1024},
    )
    target = GPUTarget("cuda", 90, 32)
    return {name: triton.compile(source, target=target).asm["ptx"] for name, source in [("worst", worst), ("pga", pga)]}


# ---------------------------------------------------------------- pytest side


def run_this_file(*args: str, interpret: bool):
    """Run this file as a script in a fresh interpreter (Triton's mode is fixed at import) and decode its JSON."""
    env = {key: value for key, value in os.environ.items() if key not in ("FASTMBR_KERNELS", "TRITON_INTERPRET")}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    assert done.returncode == 0, f"{os.path.basename(__file__)} {' '.join(args)} failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, list[str]]:
    return run_this_file(interpret=True)


@pytest.mark.parametrize("case", INTERPRETED_CASES)
def test_triton_matches_reference_interpreted(interpreted_results, case):
    assert case in interpreted_results, f"{case} did not run"
    assert interpreted_results[case] == [], "\n".join(interpreted_results[case])


def test_reference_worst_of_k_is_cross_entropy_and_argmax():
    logits, y = torch.randn(4, 6, 12), torch.randint(0, 12, (6,))
    loss, index = worst_of_k_reference(logits, y)
    expected = torch.stack([F.cross_entropy(logits[j], y, reduction="none") for j in range(4)])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.equal(index, expected.argmax(0))


@pytest.mark.parametrize(
    "logits, y, culprit",
    [
        (torch.randn(2, 3, 10), torch.tensor([0, 10, 1]), "label 10"),
        (torch.randn(2, 3, 10), torch.tensor([-1, 0, 1]), "label -1"),
        (torch.randn(3, 10), torch.tensor([0, 1, 2]), "[k, B, C]"),
        (torch.randn(2, 3, 10), torch.tensor([0, 1]), "shape [3]"),
        (torch.randn(2, 3, 10), torch.tensor([0.0, 1.0, 2.0]), "integers"),
        (torch.randn(0, 3, 10), torch.tensor([0, 1, 2]), "k >= 1"),
    ],
)
def test_worst_of_k_rejects_bad_inputs_naming_the_culprit(logits, y, culprit):
    with pytest.raises(FastmbrError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
        kernels.worst_of_k(logits, y)


def test_reference_pga_step_takes_python_float_bounds_and_keeps_nan():
    delta, grad = torch.zeros(2, 3), torch.tensor([[1.0, -1.0, float("nan")], [0.5, 0.0, -2.0]])
    out = pga_step_reference(delta.clone(), grad, 0.4, -0.25, 0.3, signed=True)
    torch.testing.assert_close(out, torch.tensor([[0.3, -0.25, 0.0], [0.3, 0.0, -0.25]]))  # sign(NaN) = 0
    out = pga_step_reference(delta, grad, 0.4, -0.25, 0.3, signed=False)
    assert out is delta
    expected = torch.tensor([[0.3, -0.25, float("nan")], [0.2, 0.0, -0.25]])
    torch.testing.assert_close(out, expected, equal_nan=True)


def test_reference_pga_step_signed_clamps_per_coordinate():
    delta = torch.zeros(2, 3)
    grad = torch.tensor([[1.0, -2.0, 0.0], [-0.5, 3.0, 4.0]])
    result = pga_step_reference(delta, grad, 0.5, torch.tensor([-0.2, -1.0, 0.0]), torch.tensor([1.0, 0.3, 0.1]))
    assert result is delta
    assert torch.equal(delta, torch.tensor([[0.5, -0.5, 0.0], [-0.2, 0.3, 0.1]]))


def test_dispatch_picks_reference_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FASTMBR_KERNELS", raising=False)
    assert kernels.kernel_backend(torch.zeros(3)) == "reference"
    assert kernels.kernel_backend(torch.zeros(3, dtype=torch.bfloat16)) == "reference"


def test_dispatch_honours_forced_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FASTMBR_KERNELS", "reference")
    assert kernels.kernel_backend(torch.zeros(3)) == "reference"
    logits, y = torch.randn(2, 3, 5), torch.tensor([0, 4, 2])
    loss, index = kernels.worst_of_k(logits, y)
    assert torch.equal(loss, worst_of_k_reference(logits, y)[0]) and torch.equal(index, loss.argmax(0))


def test_dispatch_keeps_reference_when_autograd_records(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FASTMBR_KERNELS", raising=False)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    assert kernels.kernel_backend(logits) == "reference"
    loss, _ = kernels.worst_of_k(logits, torch.tensor([0, 4, 2]))
    assert loss.grad_fn is not None


def test_dispatch_rejects_unknown_kernel_choice(monkeypatch):
    monkeypatch.setenv("FASTMBR_KERNELS", "cuda-magic")
    with pytest.raises(FastmbrError, match="FASTMBR_KERNELS"):
        kernels.kernel_backend(torch.zeros(1))


def test_importing_and_cpu_dispatch_never_import_triton():
    env = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", "FASTMBR_KERNELS")}
    code = (
        "import sys, torch, fastmbr.kernels as k; "
        "k.worst_of_k(torch.randn(2, 3, 5), torch.tensor([0, 1, 2])); "
        "k.pga_step_(torch.zeros(3), torch.ones(3), 0.1, torch.tensor(-1.0), torch.tensor(1.0)); "
        "print('triton' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_kernels_compile_for_a_gpu_without_one():
    ptx = run_this_file("compile", interpret=False)
    assert ".entry worst_of_k_kernel" in ptx["worst"] and ".entry pga_kernel" in ptx["pga"]
    assert "cvt.rn.bf16.f32" in ptx["pga"], "δ must be rounded to nearest even when stored as bf16"


if __name__ == "__main__":
    print(json.dumps(compile_for_hopper() if sys.argv[1:] == ["compile"] else run_interpreted_cases()))
