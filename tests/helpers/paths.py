"""The one place that names the repository root, params.yaml and the shared real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def shared_data_path() -> Path:
    """``../shared/data`` beside the checkout, or $DIRL_SHARED_DATA when set and not empty (it may not exist)."""
    return Path(os.environ.get("DIRL_SHARED_DATA") or ROOT.parent / "shared" / "data")


#: the shared real-data folder as it was when the tests were imported (for module-level constants); it may not exist
SHARED_DATA = shared_data_path()


def shared_data_dir() -> Path | None:
    """The shared real-data folder; None when absent (the ``shared_data`` fixture in conftest skips then)."""
    path = shared_data_path()
    return path if path.is_dir() else None


def require_dir(path: Path) -> Path:
    """``path`` (a folder of the shared real data); skips the test when it is absent."""
    if not path.is_dir():
        pytest.skip(f"{path} absent: real data lives in ../shared/data (or set DIRL_SHARED_DATA)")
    return path
