"""Shared fixtures: the shared real-data copy (skips when absent), a temporary cache dir, a phantom OpenKBP copy."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Property-based tests (hypothesis): a few derandomised examples by default, so that `make test` stays fast
# and deterministic; RTLEARN_HYPOTHESIS=deep draws many more, random ones.
try:
    from hypothesis import HealthCheck, settings

    _checks = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("fast", max_examples=12, deadline=None, derandomize=True, database=None,
                              print_blob=True, suppress_health_check=_checks)
    settings.register_profile("deep", max_examples=400, deadline=None, database=None, print_blob=True,
                              suppress_health_check=_checks)
    settings.load_profile(os.environ.get("RTLEARN_HYPOTHESIS", "fast"))
except ImportError:  # pragma: no cover - hypothesis is a test requirement
    pass


# One CPU thread count for the whole test session, chosen once from the cores free at its start: the automatic
# choice of rtlearn.compute is re-measured during training and may change with the machine's load, and a
# different thread count changes the last bits of a result (the determinism tests compare bit for bit).
if not os.environ.get("RTLEARN_THREADS"):
    from rtlearn.compute import choose_threads

    os.environ["RTLEARN_THREADS"] = str(choose_threads())


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
