"""What every test module shares: one base-model cache for the session.

The override lists several modules share are in configs.py (``from configs import CHEAP``); this directory is
on sys.path under pytest's default (rootdir-based) import mode, as for payloads.py and tiny_letters.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """DRPO_CACHE is one temporary directory for the whole session, never the user's ~/.cache/drpo: a base model
    warmed up (or a GGUF file converted) by one test is reused by every later one, and by the subprocesses
    tests start. A module whose tests need an empty cache each overrides this fixture (test_policy.py,
    test_gguf.py)."""
    monkeypatch.setenv("DRPO_CACHE", str(tmp_path_factory.getbasetemp() / "drpo-cache"))
