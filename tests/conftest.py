"""Shared fixtures: seeded RNGs, the real-data folder, a socket guard, a small cache of built-ins."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny ops: threads only spin


def pytest_configure(config):
    os.environ.setdefault("PRIVKIT_CACHE", str(REPO / ".pytest-cache-data"))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    for item in items:
        if "shared_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """privkit never touches the network: any socket connection during the suite fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        host = address[0] if isinstance(address, tuple) else address
        if host in ("127.0.0.1", "localhost", "::1"):  # torch.distributed (gloo) rendezvous on loopback
            return real_connect(self, address)
        raise RuntimeError(f"network access attempted: {address}")

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
