"""Shared fixtures: the shared real-data copy (skips when absent), a temporary cache dir, a phantom OpenKBP copy."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The shared data folder: ``$RTLEARN_SHARED_DATA``, else ``<repo>/../shared/data``; None if absent."""
    env = os.environ.get("RTLEARN_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared data copy (OpenKBP packed + CSV sample), or skip the test."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data not found (set RTLEARN_SHARED_DATA or place it at ../shared/data)")
    return path


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty RTLEARN_DATA directory for the test."""
    monkeypatch.setenv("RTLEARN_DATA", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def phantom_openkbp(tmp_path_factory) -> Path:
    """A small phantom stand-in for OpenKBP in the packed format (2 train, 1 validation, 1 test patient)."""
    from rtlearn.data.openkbp.phantom import write_phantom_openkbp

    return write_phantom_openkbp(tmp_path_factory.mktemp("ph") / "openkbp",
                                 counts={"train": 2, "validation": 1, "test": 1}, progress=False)
