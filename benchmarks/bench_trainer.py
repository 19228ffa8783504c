"""Full RL-step throughput per model size, and the sampler's KV-cache speed-up.

    python benchmarks/bench_trainer.py                 # tiny, small, medium, small MoE; 6 steps each
    python benchmarks/bench_trainer.py --sizes small --steps 3

One RL step = rollout (32 prompts x 8 samples through the KV cache) + pi_old recompute + one
optimizer step on the whole batch, as `drpo train` runs it. Tokens are response tokens; the base
model is not warmed up (warmup.steps=0), so responses run to the task's full length. The KV-cache
table comes from benchmarks/bench_rollout.py (64-token responses, batch 64).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from drpo.config import load_config
from drpo.trainer import Trainer


def rl_step_throughput(size: str, moe: bool, steps: int, out: Path) -> dict:
    config = load_config(None, [f"model={size}", f"model.moe={str(moe).lower()}", "warmup.steps=0",
                                f"out={out}", "tensorboard=false"])
    trainer = Trainer(config)
    trainer.train_step()  # warm-up: first-call allocations
    records = [trainer.train_step() for _ in range(steps)]
    return {
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "tokens_per_s": statistics.median(r["throughput/tokens_per_s"] for r in records),
        "rollout_s": statistics.median(r["time/rollout_s"] for r in records),
        "update_s": statistics.median(r["time/update_s"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium", "small-moe"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip-rollout", action="store_true", help="leave out the KV-cache table")
    args = parser.parse_args()
    print(f"RL step (drpo, 32 prompts x 8 samples, arith), median of {args.steps} steps, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | params | rollout s | update s | RL-step tokens/s |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            size, moe = name.removesuffix("-moe"), name.endswith("-moe")
            row = rl_step_throughput(size, moe, args.steps, Path(tmp) / name)
            print(f"| {name} | {row['params'] / 1e6:.2f}M | {row['rollout_s']:.3f} | {row['update_s']:.3f} | "
                  f"{row['tokens_per_s']:.0f} |", flush=True)
    if not args.skip_rollout:
        print()
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_rollout.py")), "--repeats", "1"],
                       check=True)


if __name__ == "__main__":
    main()
