import os
from pathlib import Path

import pytest
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_DATA = Path(os.environ.get("FASTMBR_DATA", DEFAULT_DATA))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$FASTMBR_DATA (CI: ../shared/data). Missing data is a failure, never a silent skip."""
    assert REAL_DATA.is_dir(), f"FASTMBR_DATA={REAL_DATA} does not exist: the real-data tests need it"
    return REAL_DATA


@pytest.fixture(autouse=True)
def _embedded_data_unless_asked(monkeypatch):
    """Runs in tests (and the processes they start) use the embedded MNIST subset unless a test passes a data
    folder explicitly: $FASTMBR_DATA would otherwise switch every `mnist` run to the full 60k set."""
    monkeypatch.delenv("FASTMBR_DATA", raising=False)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from intra-op threads, and on a busy 2-core runner OpenMP's spinning
    threads can slow them down tenfold; the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
