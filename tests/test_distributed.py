"""Data-parallel training under torchrun (CPU, gloo, 2 processes): the same math as one process, elastic
restart after a worker dies, and a SIGTERM to one rank stopping every rank at the same step boundary.

Exact equality needs a setting whose math does not depend on how the global batch is split: ERM (no δ
draws), the CNN without dropout (``--no-dropout``; dropout masks come from per-rank RNG streams), and no
BatchNorm (per-rank statistics; ``--sync-bn`` needs CUDA). What is left is the order of floating-point sums
(DDP averages two 16-sample gradients, one process takes the mean over 32): about 1e-7 here. SGD with a small
learning rate keeps that rounding from being amplified by the ReLU kinks over the 36 steps compared;
with Adadelta at lr 1.0 the two float32 trajectories part by 1e-2 within 36 steps (float64 keeps them within
1e-15), which is the dynamics, not the distribution.

A training set the global batch does not divide gives the same steps too: the last, partial global batch is
split unevenly over the ranks and each rank's gradient weighted by its share.

The 2-process runs also use ``--accumulate 2``: each rank takes its 16 samples in two micro-batches of 8, the
first under DDP's ``no_sync``, so gradient accumulation is held to the same equality.
"""

import json
import re
import signal
import subprocess
import sys

import pytest
import torch

from fastmbr.engine import checkpoint as ckpt
from processes import assert_bit_identical, run_single, succeeded, worker_env

TOLERANCE = 1e-5
STEPS_PER_EPOCH = 18  # 576 training images (limit 640 less the validation split) / global batch 32
ARGS = ["train", "mnist", "--algo", "erm", "--limit", "640", "--batch-size", "32", "--epochs", "2",
        "--image-size", "16", "--optimizer", "sgd", "--lr", "0.005", "--no-dropout", "--deterministic",
        "--log-every", "1", "--checkpoint-every", "4", "--keep-checkpoints", "100", "--device", "cpu",
        "--no-progress"]
TWO_PROCESS_ARGS = ARGS + ["--accumulate", "2"]


def run_torchrun(args, env=None, max_restarts=0, timeout=300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "--max-restarts", str(max_restarts), "-m", "fastmbr"]
    return subprocess.run([*launcher, *args], env=env or worker_env(), capture_output=True, text=True,
                          timeout=timeout)


def worker_exit_codes(proc: subprocess.CompletedProcess) -> list[int]:
    """Exit codes of the failed workers from torchrun's failure report, the first observed failure first.

    After the first worker leaves, torchrun sends SIGTERM to the others; one still tearing down its
    interpreter (its handler already restored) then shows -15, so only the first is exactly 143.
    """
    report = proc.stdout + proc.stderr
    blocks = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", report)
    codes = {int(rank): int(code) for rank, code in blocks}
    root = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", report, re.S)
    assert root and codes and set(codes.values()) <= {143, -signal.SIGTERM}, report[-4000:]
    return [int(root.group(1)), *codes.values()]


def loss_curve(run_dir) -> dict[tuple[int, int], float]:
    """(epoch, batch) → running epoch loss, from the per-step lines of train.log."""
    lines = re.findall(r"epoch (\d+) batch (\d+)/\d+: loss (\S+)", (run_dir / "train.log").read_text())
    curve = {(int(e), int(b)): float(loss) for e, b, loss in lines}
    assert len(curve) == len(lines), "a step was logged twice: only rank 0 may write train.log"
    return curve


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return weights(run_dir / ckpt.checkpoint_name(2, 0))


def max_abs_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    succeeded(run_single(ARGS + ["--out", str(out)]))
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    succeeded(run_torchrun(TWO_PROCESS_ARGS + ["--out", str(out)]))
    return out


@pytest.mark.timeout(600)
def test_two_processes_match_one_process_with_the_same_global_batch(one_process, two_processes):
    one, two = loss_curve(one_process), loss_curve(two_processes)
    assert len(one) == 2 * STEPS_PER_EPOCH and one.keys() == two.keys()
    assert max(abs(one[step] - two[step]) for step in one) <= TOLERANCE
    assert max_abs_difference(final_weights(one_process), final_weights(two_processes)) <= TOLERANCE
    # The comparison has teeth: the weights moved far more than the tolerance over the second epoch.
    moved = max_abs_difference(final_weights(one_process), weights(one_process / ckpt.checkpoint_name(1, 0)))
    assert moved > 100 * TOLERANCE, moved
    single = json.loads((one_process / "metrics.json").read_text())
    double = json.loads((two_processes / "metrics.json").read_text())
    assert double["world_size"] == 2 and double["global_batch"] == 32 and double["options"]["accumulate"] == 2
    for domain in ("A", "B"):  # each rank scored half of the test split; the summed counts cover all of it
        assert double["test"][domain]["n"] == single["test"][domain]["n"] == 2000
        assert double["test"][domain]["top1"] == pytest.approx(single["test"][domain]["top1"], abs=0.051)


@pytest.mark.timeout(600)
def test_worker_killed_under_max_restarts_resumes_and_finishes_identically(two_processes, tmp_path):
    out = tmp_path / "restarted"
    env = worker_env(FASTMBR_FAULT_AT_STEP="10")  # rank 1 calls os._exit(1) at step 10, first attempt only
    succeeded(run_torchrun(TWO_PROCESS_ARGS + ["--out", str(out), "--auto-resume"], env=env, max_restarts=1))
    log = (out / "train.log").read_text()
    assert "resumed at epoch 1 batch 8 on 2 process(es) (restart 1)" in log, log
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert_bit_identical(final_weights(out), final_weights(two_processes))


@pytest.mark.timeout(600)
def test_sigterm_to_one_rank_stops_all_at_the_next_step_and_resume_continues(two_processes, tmp_path):
    out = tmp_path / "stopped"
    env = worker_env(FASTMBR_FAULT_AT_STEP="10", FASTMBR_FAULT_SIGNAL="term")  # SIGTERM to rank 1 only
    stopped = run_torchrun(TWO_PROCESS_ARGS + ["--out", str(out)], env=env)
    assert stopped.returncode != 0
    assert worker_exit_codes(stopped)[0] == 143, stopped.stderr[-4000:]  # the first rank out left cleanly
    log = (out / "train.log").read_text()
    assert "checkpoint written at epoch 1 batch 11; exiting" in log, log
    assert ckpt.list_checkpoints(out)[-1].name == ckpt.checkpoint_name(0, 11)
    assert not (out / "metrics.json").exists()
    succeeded(run_torchrun(TWO_PROCESS_ARGS + ["--out", str(out), "--resume"]))
    assert_bit_identical(final_weights(out), final_weights(two_processes))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("limit, n_train, extra, shares", [
    ("650", 585, ["--accumulate", "2"], [5, 4]),  # 18 global batches of 32, then 9 images split 5 + 4
    ("641", 577, [], [1, 0]),  # the last global batch is one image; rank 1 holds a placeholder of weight 0
])
def test_a_global_batch_that_does_not_divide_the_data_takes_the_same_steps(tmp_path, limit, n_train, extra, shares):
    """N processes take exactly the steps of one process at any dataset size: the last, partial global batch is
    split unevenly and each rank's gradient weighted by its share (it used to be dropped: 18 steps against 19)."""
    from fastmbr.pipelines.loaders.tensor import last_step_shares

    assert last_step_shares(n_train, 16, 2) == shares
    args = list(ARGS)
    args[args.index("--limit") + 1], args[args.index("--epochs") + 1] = limit, "1"
    single, double = tmp_path / "one", tmp_path / "two"
    succeeded(run_single(args + ["--out", str(single)]))
    succeeded(run_torchrun(args + extra + ["--out", str(double)]))
    one, two = loss_curve(single), loss_curve(double)
    assert len(one) == STEPS_PER_EPOCH + 1 and one.keys() == two.keys()
    assert max(abs(one[step] - two[step]) for step in one) <= TOLERANCE
    end = ckpt.checkpoint_name(1, 0)
    assert max_abs_difference(weights(single / end), weights(double / end)) <= TOLERANCE
    first, last = (json.loads((run / "metrics.json").read_text()) for run in (single, double))
    assert first["counts"]["train"]["A"] == n_train
    # the epoch's accuracy counts every image once (a placeholder not at all)
    assert first["epochs"][0]["train_top1"] == pytest.approx(last["epochs"][0]["train_top1"], abs=1e-9)
