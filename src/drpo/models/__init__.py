"""The small models of the CPU trainer: a character tokenizer and a dense / MoE decoder-only transformer."""

from drpo.models.tokenizer import CharTokenizer
from drpo.models.transformer import GPT, SIZES, KVCache, ModelConfig, build_model

__all__ = ["GPT", "SIZES", "CharTokenizer", "KVCache", "ModelConfig", "build_model"]
