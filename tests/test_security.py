"""Security properties of the package as a whole."""

import socket
import subprocess
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


def test_sockets_are_blocked_during_the_suite():
    """The suite-wide guard (conftest) turns any outbound connection into a failure."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(RuntimeError, match="network access attempted"):
        s.connect(("203.0.113.1", 80))
    s.close()


def test_library_never_unpickles_or_opens_network_connections():
    """No pickle.load / torch.load / urllib / requests / socket use anywhere in privkit or the CLI."""
    forbidden = ["pickle.load", "torch.load(", "urllib.request", "import requests", "socket.socket(",
                 "allow_pickle=True", "hf_hub_download", "load_state_dict_from_url", "download=True"]
    hits = []
    for folder in ("privkit", "cli"):
        for path in (PACKAGE / folder).rglob("*.py"):
            text = path.read_text()
            hits += [f"{path.relative_to(PACKAGE)}: {f}" for f in forbidden if f in text]
    assert not hits, hits
