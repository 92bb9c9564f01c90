#!/usr/bin/env bash
# The GPU check, prepared to run as ONE command on a machine with a CUDA GPU and no network (a lent device
# machine has a budget of minutes): what only a GPU shows — Triton kernels compiled for the real device against
# their references, no host synchronisation inside a training step, bf16 autocast + torch.compile — and then the
# GPU benchmarks (images/s, speed-ups over the reference path, share of bf16 peak).
#
#   bash bench/device_check.sh            # results into $OUT (the device tool's folder) or bench/results
#
# fastmbr is installed into the machine's own Python without its dependencies (torch, triton, typer, rich,
# safetensors, pyyaml must be there already). The lent H200 image has neither nvidia-dali (476 MB installed, far
# over the 64 MiB a call may carry) nor ffcv (built here against Debian's libturbojpeg/libopencv): their bench
# cases then record "not installed", and the GPU decode measured there is torchvision's nvJPEG (`--loader
# nvjpeg`); the ERM-with-DALI target needs a GPU machine with nvidia-dali-cuda130 installed. Each stage has its
# own time limit, in the order of what matters most, so that one slow stage cannot eat the rest of a 10-minute
# call; the exit status is pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu PYTHON=.venv/bin/python: a dry run of the script itself on a CPU machine
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

"$PY" -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { tail "$OUT/install.log"; exit 1; }
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    git rev-parse --short HEAD 2>/dev/null || true
} > "$OUT/device.txt" 2>&1

timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_kernels.py tests/test_compile.py \
    2>&1 | tee "$OUT/pytest-cuda.log"
status=${PIPESTATUS[0]}

bench() { timeout "$1" "$PY" -m fastmbr bench --device "$DEVICE" --out "$OUT" "${@:2}" 2>&1 | tail -n 40; }
# the issue's targets at the defaults on a GPU (base MUNIT + ResNet-50 at 224 px, bf16 and compiled, against
# the fp32 eager reference): MDA-3 full step, worst_of_k, ERM's step alone and fed from a JPEG tree
bench 240 --amp --compile --only mda-3 --only kernels --only "classifier step" --only "erm fed"
# then the rest of the full suite, and the CPU suite's small cases (tiny MUNIT, CNN, 32 px) on the GPU
bench 100 --amp --compile --only "expand k=3" --only "expand k=10" --only mrt-10 --only loaders
bench 60 --quick
exit "$status"
