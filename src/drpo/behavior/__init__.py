"""Behavior policies mu: the contract (base.py), the rollout modes (modes.py) and one module per engine.

    base.py      BehaviorPolicy (the Protocol the trainer and drpo mismatch see), SamplingParams
    modes.py     ROLLOUT_MODES: per rollout.precision, what it rounds and which engines run it
    lagged.py    LaggedWeights: the weights of `lag` syncs ago, shared by every engine
    native.py    the trainer's own torch model in another precision (simulated mismatch)
    vllm.py      vLLM in this process (hf: models on a GPU)
    llamacpp.py  llama.cpp on the CPU through its low-level API (genuine engine mismatch)

drpo.backends.build_behavior picks the engine a run config names. The engines are imported from their own
modules (each needs torch, vLLM or llama.cpp), so importing this package costs nothing.
"""

from drpo.behavior.base import BehaviorPolicy, SamplingParams
from drpo.behavior.modes import ENGINES, ROLLOUT_MODES, RolloutMode, modes_of

__all__ = ["ENGINES", "ROLLOUT_MODES", "BehaviorPolicy", "RolloutMode", "SamplingParams", "modes_of"]
