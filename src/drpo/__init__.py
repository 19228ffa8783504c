"""drpo: RL post-training of language models with divergence-aware trust regions.

    from drpo import RunConfig, train      # the Python API (drpo/api.py); `drpo train` is the same from a shell
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: so that `import drpo` (e.g. for its version) does not import torch
    if name in ("train", "TrainResult"):
        from drpo import api

        return getattr(api, name)
    if name == "RunConfig":
        from drpo.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'drpo' has no attribute {name!r}")


__all__ = ["RunConfig", "TrainResult", "train"]
