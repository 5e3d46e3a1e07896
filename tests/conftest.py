"""Shared test fixtures. Real data in ../shared/data is optional: tests using it skip when absent."""

from pathlib import Path

import pytest
import torch
from datagen import (  # noqa: F401  tiny datasets in each real layout (tests/datagen.py)
    camvid_root,
    cityscapes_root,
    folder_root,
    pet_root,
    sbd_root,
    voc_root,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA
