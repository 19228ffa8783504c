"""The small models of the CPU trainer: a character tokenizer and a dense / MoE decoder-only transformer."""

from __future__ import annotations

__all__ = ["GPT", "SIZES", "CharTokenizer", "KVCache", "ModelConfig", "build_model"]


def __getattr__(name: str):
    # lazy: the config reads drpo.models.gguf (which model names are pretrained) while it validates, and a
    # config error should not wait for torch, which transformer.py imports
    if name == "CharTokenizer":
        from drpo.models.tokenizer import CharTokenizer

        return CharTokenizer
    if name in ("GPT", "SIZES", "KVCache", "ModelConfig", "build_model"):
        from drpo.models import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'drpo.models' has no attribute {name!r}")
