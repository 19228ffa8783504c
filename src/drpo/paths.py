"""Where drpo keeps what it computes once and reuses: ``$DRPO_CACHE``, default ``~/.cache/drpo``.

    cache_dir() / "base"   base models of the built-in transformer, after their warm-up (drpo/warmup.py)
    cache_dir() / "hf"     GGUF files converted into Hugging Face model directories (drpo/models/gguf.py)
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("DRPO_CACHE", Path.home() / ".cache" / "drpo"))
