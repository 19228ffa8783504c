"""The SmolLM2-135M recipe on this CPU: seconds per RL step, greedy evaluation against its FLOP estimate, peak memory.

    python benchmarks/bench_smollm2.py                              # the recipe (bf16 autocast), 6 steps, 200-prompt eval
    python benchmarks/bench_smollm2.py --precision fp32 amp         # both precisions, one child process each
    python benchmarks/bench_smollm2.py --precision fp32 amp --steps 10 --seed 0 --curves   # paired learning pilot
    python benchmarks/bench_smollm2.py --steps 2 --eval-prompts 20  # smoke test

Each precision runs in its own child process exactly as `drpo train --config examples/smollm2/drpo_arith.yaml`
does (8 prompts x 8 samples, 16 new tokens, bf16 rollouts, 4 updates per batch, pi_old recomputed), with
``steps=--steps``, one greedy evaluation of ``--eval-prompts`` held-out prompts at the start and one at the end,
and ``--threads`` torch threads. ``fp32``: float32 weights and compute; ``amp``: ``model.autocast=bf16`` (bf16
compute over float32 master weights), the recipe's setting.

Reported, per precision:
- step s: median over the steps after the first (its allocations are one-off) of rollout + updates
  (``time/rollout_s + time/update_s``, what `drpo train` logs), against the target of 12 s;
- eval s: the final greedy evaluation's wall time, and its FLOP estimate: 2 x non-embedding parameters per
  token the model processes with the KV cache (each prompt's prefill over its padded length, then one token
  per row per decode step), plus 2 x the output head's parameters per position whose logits are formed (the
  last prompt position, then every decode step); attention's own FLOPs are left out (about 2% at these
  lengths). The estimate in seconds divides by the float32 torch.mm peak measured in the same process (the
  evaluation runs the float32 policy); target: eval s at most 2x that;
- CPU s: the process's CPU time (all threads) of the same step and evaluation: with one thread on a busy
  machine it is close to the step's time on an idle core, which the wall time is not;
- peak RSS: ``memory/peak_rss_gb`` of the run's summary.json (ru_maxrss of the process, model load included);
  target 4 GiB.
With ``--curves``, the training reward of every step and the evaluations, side by side per precision: with the
same ``--seed`` both precisions see the same prompts (the pilot behind the recipe's precision choice).

The machine's load average is printed before and after each child: figures taken with other work on the
cores are not comparable (two threads waiting on a busy core stall each other), so time it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "smollm2" / "drpo_arith.yaml"
PRECISIONS = {"fp32": ["model.autocast=none"], "amp": ["model.autocast=bf16"]}
TARGETS = {"step_s": 12.0, "eval_over_estimate": 2.0, "peak_rss_gb": 4.0}
RESULT_PREFIX = "BENCH_RESULT "


def child(precision: str, steps: int, eval_prompts: int, seed: int, out: str) -> dict:
    """One recipe run in this process; returns its figures."""
    import torch

    import drpo.models.policy as policy_module
    from drpo.config import load_config
    from drpo.metrics import read_metrics
    from drpo.trainer import Trainer

    config = load_config(str(RECIPE), [*PRECISIONS[precision], f"steps={steps}", f"eval.every={steps}",
                                       f"eval.prompts={eval_prompts}", f"seed={seed}", f"out={out}",
                                       "checkpoint_every=1000000", "tensorboard=false"])
    trainer = Trainer(config)
    generated = []  # (prompt rows, padded prompt length, rows, new tokens) of each evaluation call
    original = policy_module.generate

    def recorded(model, prompts, samples, *args, **kwargs):
        batch = original(model, prompts, samples, *args, **kwargs)
        generated.append((len(prompts), max(map(len, prompts)), len(batch), batch.response_ids.shape[1]))
        return batch

    policy_module.generate = recorded
    evaluations = []
    evaluate = trainer.evaluate

    def timed_evaluate():
        generated.clear()
        start, cpu = time.perf_counter(), time.process_time()
        result = evaluate()
        evaluations.append({"s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                            "calls": list(generated), **result})
        return result

    step_cpu_s = []
    train_step = trainer.train_step

    def timed_train_step():
        cpu = time.process_time()
        result = train_step()
        step_cpu_s.append(time.process_time() - cpu)
        return result

    trainer.evaluate, trainer.train_step = timed_evaluate, timed_train_step
    summary = trainer.train()
    records = [r for r in read_metrics(Path(out)) if "time/rollout_s" in r]
    step_s = [r["time/rollout_s"] + r["time/update_s"] for r in records]

    hf = trainer.model.hf
    head = hf.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in hf.parameters()) - hf.get_input_embeddings().weight.numel()  # head tied or not
    if hf.get_output_embeddings().weight is not hf.get_input_embeddings().weight:
        body -= head
    final = evaluations[-1]
    tokens = sum(n * length + rows * (new - 1) for n, length, rows, new in final["calls"])
    head_positions = sum(n + rows * (new - 1) for n, length, rows, new in final["calls"])
    flops = 2 * body * tokens + 2 * head * head_positions
    from bench_vs_trl import matmul_peak_gflops  # the same measurement as the TRL comparison's

    peak = matmul_peak_gflops(torch.float32, 2048)
    return {
        "precision": precision, "threads": torch.get_num_threads(), "steps": len(step_s),
        "step_s": statistics.median(step_s[1:] or step_s), "step_s_all": step_s,
        "step_cpu_s": statistics.median(step_cpu_s[1:] or step_cpu_s), "eval_cpu_s": final["cpu_s"],
        "rollout_s": statistics.median(r["time/rollout_s"] for r in records[1:] or records),
        "update_s": statistics.median(r["time/update_s"] for r in records[1:] or records),
        "eval_s": final["s"], "eval_prompts": final["eval/prompts"], "eval_tokens": tokens,
        "eval_tflop": flops / 1e12, "fp32_peak_gflops": peak, "eval_estimate_s": flops / peak / 1e9,
        "eval_over_estimate": final["s"] / (flops / peak / 1e9),
        "peak_rss_gb": summary["memory/peak_rss_gb"],
        "reward": [r["reward/mean"] for r in records],
        "eval_accuracy": [e["eval/accuracy"] for e in evaluations],
    }


def run_child(precision: str, args, out: Path) -> dict:
    return run_in_child(__file__, precision, args.threads, ["--child", precision, "--steps", str(args.steps),
                                                            "--eval-prompts", str(args.eval_prompts), "--seed",
                                                            str(args.seed), "--out", str(out)])


def run_in_child(script: str, label: str, threads: int, arguments: list[str]) -> dict:
    """``python SCRIPT ARGUMENTS`` with ``threads`` OpenMP/MKL threads, the load average printed before and after;
    the JSON the child printed after RESULT_PREFIX (a failed child ends the benchmark with its stderr)."""
    env = {**os.environ, **{key: str(threads) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    print(f"[{label}] load average before: {os.getloadavg()[0]:.2f}", flush=True)
    result = subprocess.run([sys.executable, script, *arguments], env=env, capture_output=True, text=True)
    print(f"[{label}] load average after: {os.getloadavg()[0]:.2f}", flush=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        sys.exit(f"{label} child failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def verdict(value: float, target: float) -> str:
    return f"met ({value / target:.2f}x the target)" if value <= target else f"MISSED by {value - target:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=["amp"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval-prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--curves", action="store_true", help="print every step's training reward per precision")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.steps, args.eval_prompts, args.seed, args.out)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            results[precision] = run_child(precision, args, Path(tmp) / precision)
    print(f"\nSmolLM2-135M recipe, {args.steps} steps, {args.threads} threads, eval on {args.eval_prompts} prompts\n")
    print("| precision | rollout s | update s | step s (median) | step CPU s | eval s | eval CPU s | eval TFLOP | "
          "eval estimate s | eval / estimate | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['rollout_s']:.2f} | {r['update_s']:.2f} | {r['step_s']:.2f} | {r['step_cpu_s']:.2f} | "
              f"{r['eval_s']:.1f} | {r['eval_cpu_s']:.1f} | "
              f"{r['eval_tflop']:.2f} | {r['eval_estimate_s']:.1f} | {r['eval_over_estimate']:.2f}x | "
              f"{r['peak_rss_gb']:.2f} |")
    for name, r in results.items():
        print(f"\n{name}: step {verdict(r['step_s'], TARGETS['step_s'])}; evaluation "
              f"{verdict(r['eval_over_estimate'], TARGETS['eval_over_estimate'])} "
              f"(fp32 matmul peak {r['fp32_peak_gflops']:.0f} GFLOP/s); peak memory "
              f"{verdict(r['peak_rss_gb'], TARGETS['peak_rss_gb'])}")
    if len(results) == 2:
        fp32, amp = results["fp32"], results["amp"]
        print(f"\namp / fp32 in this run: step {amp['step_s'] / fp32['step_s']:.2f}x, "
              f"peak RSS {amp['peak_rss_gb'] / fp32['peak_rss_gb']:.2f}x")
    if args.curves:
        print("\n| step | " + " | ".join(f"{name} reward" for name in results) + " |")
        print("|---:|" + "---:|" * len(results))
        for step in range(args.steps):
            print(f"| {step + 1} | " + " | ".join(f"{r['reward'][step]:.3f}" for r in results.values()) + " |")
        for name, r in results.items():
            half = r["reward"][len(r["reward"]) // 2:]
            print(f"{name}: mean reward over the last {len(half)} steps {statistics.mean(half):.3f}; eval accuracy "
                  + " -> ".join(f"{a:.3f}" for a in r["eval_accuracy"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
