"""Rollout engines side by side on the SmolLM2-135M recipe: rollout tokens/s, weight-sync time, RL step time.

    python benchmarks/bench_engines.py                                    # native bf16 against llama.cpp f16/q8_0/q4_0
    python benchmarks/bench_engines.py --rollouts native:bf16 llamacpp:q8_0 --steps 3 --new-tokens 16 64
    python benchmarks/bench_engines.py --steps 2 --prompts 2 --group 2    # smoke test

Each rollout runs in its own child process exactly as `drpo train --config examples/smollm2/drpo_arith.yaml
rollout.engine=E rollout.precision=M` does (8 prompts x 8 samples, 4 updates per batch, bf16 autocast), for
``--steps`` RL steps, with ``--threads`` threads for torch and for llama.cpp alike. Reported per engine, as medians
over the steps after the first (its allocations and the engine's first load are one-off):

- rollout s and rollout tokens/s: ``time/rollout_s`` of `drpo train`, and the response tokens it sampled per second;
- sync s: ``time/sync_s``, the weights reaching the engine after the updates (native: a copy into the bf16 model;
  llama.cpp: a GGUF written in the engine's weight type and loaded);
- step s: rollout + updates + sync, the whole RL step but its evaluation;
- and, per ``--new-tokens`` length, the engine's sampling alone on the same batch with EOS ignored (every row
  samples exactly that many tokens, so the engines do the same work): tokens/s, best of ``--repeats``.

The machine's load average is printed before and after each child: a figure taken with other work on the cores
is not comparable, so time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_smollm2 import RESULT_PREFIX, run_in_child

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "smollm2" / "drpo_arith.yaml"
DEFAULT_ROLLOUTS = ["native:bf16", "llamacpp:f16", "llamacpp:q8_0", "llamacpp:q4_0"]


def child(rollout: str, args, out: str) -> dict:
    """One engine's figures, measured in this process."""
    import torch

    from drpo.behavior import SamplingParams
    from drpo.config import load_config
    from drpo.metrics import read_metrics
    from drpo.trainer import Trainer

    engine, mode = rollout.split(":")
    threads = [f"rollout.llamacpp_threads={args.threads}"] if engine == "llamacpp" else []
    config = load_config(str(RECIPE), [f"rollout.engine={engine}", f"rollout.precision={mode}", *threads,
                                       f"rollout.prompts={args.prompts}", f"rollout.group_size={args.group}",
                                       f"steps={args.steps}", "eval.every=1000000", "eval.late_every=null",
                                       "eval.prompts=1", f"out={out}", "checkpoint_every=1000000",
                                       "tensorboard=false"])
    trainer = Trainer(config)
    trainer.train()
    records = [r for r in read_metrics(Path(out)) if "time/rollout_s" in r]
    later = records[1:] or records

    def median(key: str) -> float:
        return statistics.median(r[key] for r in later)

    tokenizer, task = trainer.policy.tokenizer, trainer.task
    prompts = [trainer.policy.encode_prompt(example) for example in task.eval[:args.prompts]]
    sampling_rates = {}
    for new_tokens in args.new_tokens:
        best = float("inf")
        for repeat in range(args.repeats):
            sampling = SamplingParams(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, ignore_eos=True,
                                      generator=torch.Generator().manual_seed(repeat))
            start = time.perf_counter()
            batch = trainer.behavior.generate(prompts, args.group, new_tokens, sampling)
            best = min(best, time.perf_counter() - start)
        sampling_rates[str(new_tokens)] = float(batch.response_mask.sum()) / best
    return {
        "rollout": rollout, "threads": args.threads, "steps": len(records), "engine": trainer.behavior.describe(),
        "rollout_s": median("time/rollout_s"), "update_s": median("time/update_s"), "sync_s": median("time/sync_s"),
        "step_s": statistics.median(r["time/rollout_s"] + r["time/update_s"] + r["time/sync_s"] for r in later),
        "response_tokens": statistics.median(r["response_length/mean"] for r in later) * args.prompts * args.group,
        "sampling_tokens_per_s": sampling_rates,
    }


def run_child(rollout: str, args, out: Path) -> dict:
    return run_in_child(__file__, rollout, args.threads, [
        "--child", rollout, "--out", str(out), "--steps", str(args.steps), "--prompts", str(args.prompts), "--group",
        str(args.group), "--threads", str(args.threads), "--repeats", str(args.repeats), "--new-tokens",
        *map(str, args.new_tokens)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", nargs="+", default=DEFAULT_ROLLOUTS, help="ENGINE:MODE, as rollout.engine and "
                        "rollout.precision take them")
    parser.add_argument("--steps", type=int, default=4, help="RL steps per engine (the first is not counted)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (the recipe's 8)")
    parser.add_argument("--group", type=int, default=8, help="responses per prompt (the recipe's 8)")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 128],
                        help="response lengths of the sampling-only measurement (EOS ignored)")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many sampling-only runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_PREFIX + json.dumps(child(args.child, args, args.out)), flush=True)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rollout in args.rollouts:
            results[rollout] = run_child(rollout, args, Path(tmp) / rollout.replace(":", "_"))
    print(f"\nSmolLM2-135M recipe ({args.prompts} prompts x {args.group} samples), {args.steps} steps, "
          f"{args.threads} threads; medians over steps 2..{args.steps}\n")
    lengths = [str(n) for n in args.new_tokens]
    print("| rollout | rollout s | response tokens | rollout tokens/s | sync s | update s | step s | "
          + " | ".join(f"sampling tokens/s, {n} tokens" for n in lengths) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(lengths))
    for name, r in results.items():
        print(f"| {name} | {r['rollout_s']:.2f} | {r['response_tokens']:.0f} | "
              f"{r['response_tokens'] / r['rollout_s']:.0f} | {r['sync_s']:.2f} | {r['update_s']:.2f} | "
              f"{r['step_s']:.2f} | " + " | ".join(f"{r['sampling_tokens_per_s'][n]:.0f}" for n in lengths) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
