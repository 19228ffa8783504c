"""Checkpoint size of a lagged run: what the model, AdamW and the behavior policy's lag queue take.

    python benchmarks/bench_checkpoint.py                            # SmolLM2-135M, bf16 rollouts, lag 2
    python benchmarks/bench_checkpoint.py --model tiny --lag 1

No RL step runs: AdamW's state is filled by one step on zero gradients and the lag queue by ``lag`` syncs,
so the file has its full size. Each checkpoint is kept twice on disk (latest.pt and previous.pt).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from drpo.config import load_config
from drpo.trainer import Trainer


def tensor_bytes(value, seen: set | None = None) -> int:
    """Bytes of the tensors in ``value``; a tensor stored under several names (a tied weight) counts once, as
    torch.save writes it once."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        if value.data_ptr() in seen:
            return 0
        seen.add(value.data_ptr())
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    return 0


def checkpoint_size(model: str, precision: str, lag: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(load_config(None, [f"model={model}", "task=arith", f"rollout.lag={lag}",
                                             f"rollout.precision={precision}", f"out={out}/run", "tensorboard=false"]))
        for parameter in trainer.model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        trainer.optimizer.step()
        for _ in range(lag):
            trainer.behavior.sync(trainer.model)
        path = trainer.checkpoint()
        state = torch.load(path, weights_only=True)
        return {"model": model, "precision": precision, "lag": lag,
                "parameters": sum(p.numel() for p in trainer.model.parameters()),
                "file_bytes": os.path.getsize(path),
                **{f"{key}_bytes": tensor_bytes(state[key]) for key in ("model", "optimizer", "behavior")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--lag", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    result = checkpoint_size(args.model, args.precision, args.lag)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
