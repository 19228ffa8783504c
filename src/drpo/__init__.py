"""drpo: RL post-training of language models with divergence-aware trust regions."""

__version__ = "0.1.0"
