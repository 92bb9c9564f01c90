"""Helpers for tests that run fastmbr in child processes (single process or under torchrun)."""

import os
import subprocess
import sys

import torch


def worker_env(**extra) -> dict:
    """The test environment for a child: no fault injection unless asked, one OpenMP thread, the embedded
    MNIST subset (FASTMBR_DATA would switch `mnist` to the full 60k set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTMBR_FAULT") and k != "FASTMBR_DATA"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run_single(args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastmbr", *args], env=env or worker_env(), capture_output=True,
                          text=True, timeout=timeout)


def succeeded(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max |diff| {(a[name] - b[name]).abs().max().item()}"
