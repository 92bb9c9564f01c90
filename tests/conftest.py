import os
from pathlib import Path

import pytest
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$FASTMBR_DATA (CI: ../shared/data). Missing data is a failure, never a silent skip."""
    root = Path(os.environ.get("FASTMBR_DATA", DEFAULT_DATA))
    assert root.is_dir(), f"FASTMBR_DATA={root} does not exist: the real-data tests need it"
    return root


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
