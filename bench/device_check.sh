#!/usr/bin/env bash
# The GPU check, prepared as three calls of under 10 minutes each on a machine with a CUDA GPU and no network (a
# lent device machine has a budget of minutes): what only a GPU shows — Triton kernels compiled for the real device
# against their references, no host synchronisation inside a training step, bf16 autocast + torch.compile — and the
# GPU benchmarks (images/s, speed-ups over the reference path at fp32/fp32 and amp/amp, share of bf16 peak).
#
#   bash bench/device_check.sh                 # call 1: kernels (tests + bench), then MDA-3 and MRT-10 full steps
#   bash bench/device_check.sh --call 2        # call 2: CUDA/compile tests, loaders, ERM fed by each loader
#   bash bench/device_check.sh --call 3        # call 3: G.expand k=3/10, then the CPU suite's small cases
#   bash bench/device_check.sh --device cpu    # a dry run of the script on a CPU (small sizes, no compile)
#
# Results go to $OUT (the device tool's folder) or bench/results. fastmbr is NOT pip-installed: the machine's torch
# may not be ours (torch 2.11 with torchvision 0.26 has been seen) and pip would have to resolve against it. A
# folder of links lays the checkout out as the installed package (fastmbr.kernels = kernels/, fastmbr.bench = bench/,
# fastmbr.pipelines = pipelines/) and goes first on PYTHONPATH; torch, triton, typer, rich, safetensors and pyyaml
# must be there already. The lent H200 image has neither nvidia-dali nor ffcv: their loader cases record
# "not installed". Every stage has its own time limit and none runs past the call's budget (570 s on a GPU, 285 s in
# a CPU dry run; BUDGET=seconds overrides), so no stage can take a call's whole 10 minutes; ERM's
# classifier step alone is not timed (the "ERM fed" cases time it, resident and fed). The exit status is pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
CALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --call) CALL="$2"; shift 2 ;;
        *) echo "usage: bash bench/device_check.sh [--device cuda|cpu] [--call 1|2|3]" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# the package layout of pyproject's package-dir, as links: no build, no pip, whatever torch is installed
LINKS="$(mktemp -d)"
trap 'rm -rf "$LINKS"' EXIT
mkdir "$LINKS/fastmbr"
for entry in "$PWD"/fastmbr/*; do ln -s "$entry" "$LINKS/fastmbr/"; done
ln -s "$PWD/kernels" "$LINKS/fastmbr/kernels"
ln -s "$PWD/bench" "$LINKS/fastmbr/bench"
ln -s "$PWD/pipelines" "$LINKS/fastmbr/pipelines"
export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1  # `python -m` must not put the checkout's own fastmbr/ (no kernels/, bench/) first

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$PY" - <<'PYTHON'
import torch, torchvision, fastmbr
print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("no triton")
print("fastmbr from", fastmbr.__file__)
PYTHON
    git rev-parse --short HEAD 2>/dev/null || true
} > "$OUT/device-call$CALL.txt" 2>&1
cat "$OUT/device-call$CALL.txt"

if [ "$DEVICE" = cpu ]; then
    # the dry run checks the script, not the speed: the CPU suite's sizes (tiny MUNIT, CNN, 32 px), batch 8, no
    # compile, and limits that keep call 1 under 5 minutes on a busy 2-core machine
    FAST=(--quick --batch-size 8)
    LIMIT=(90 40 150)
    BUDGET="${BUDGET:-285}"
else
    FAST=(--amp --compile)  # the defaults on a GPU: base MUNIT + ResNet-50 at 224 px, bf16 and compiled
    LIMIT=(100 100 300)
    BUDGET="${BUDGET:-570}"
fi
# each stage runs for at most its own limit and never past the call's budget (counted from the script's start)
limit() { local left=$(( BUDGET - SECONDS )); echo $(( left < $1 ? left : $1 )); }
enough() { [ "$1" -ge 10 ] || { echo "skipped: ${*:2} (the call's ${BUDGET} s budget is spent)"; return 1; }; }
bench() {
    enough "$1" "bench ${*:2}" || return 0
    timeout "$1" "$PY" -m fastmbr bench --device "$DEVICE" --out "$OUT" "${@:2}" 2>&1 | tail -n 30
}
tests() {
    enough "$1" "pytest ${*:2}" || return 124
    timeout "$1" "$PY" -m pytest -q -rs -p no:cacheprovider "${@:2}" 2>&1 | tee -a "$OUT/pytest-call$CALL.log" | tail -n 15
    return "${PIPESTATUS[0]}"
}

status=0
case "$CALL" in
    1)  # the kernels against their references on the real device, then the issue's targets
        tests "$(limit "${LIMIT[0]}")" tests/test_kernels.py || status=$?
        bench "$(limit "${LIMIT[1]}")" "${FAST[@]}" --only kernels
        bench "$(limit "${LIMIT[2]}")" "${FAST[@]}" --only mda-3 --only mrt-10 ;;
    2)
        tests "$(limit 240)" tests/test_cuda.py tests/test_compile.py || status=$?
        bench "$(limit 150)" "${FAST[@]}" --only loaders
        bench "$(limit 150)" "${FAST[@]}" --only "erm fed" ;;
    3)
        bench "$(limit 240)" "${FAST[@]}" --only "expand k=3" --only "expand k=10"
        bench "$(limit 240)" --quick ;;
    *) echo "--call must be 1, 2 or 3" >&2; exit 2 ;;
esac
exit "$status"
