"""Forward+backward time of every loss, and peak extra memory of the Top-K divergence.

    python benchmarks/bench_losses.py                  # [256, 8192] float32 tokens, median of 9
    python benchmarks/bench_losses.py --rows 64 --cols 1024 --repeats 3   # quick look

Prints markdown tables (paste into docs/benchmarks.md):
1. each registered loss (metrics included, token-mean aggregation, backward) against `ppo_clip`
   and against the bare PPO-clip objective written as one plain PyTorch expression with no
   metrics (the floor for eager PyTorch on this memory-bound work); verl's own `vanilla` and
   `dppo_tv` on the same tensors when verl is installed;
2. peak extra memory (beyond the logits) of the Top-K TV/KL divergence against a naive full
   log_softmax, at V = 32768 and V = 151936, each measured in a fresh subprocess (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from drpo.losses import LOSSES, aggregate, get_loss


def make_inputs(rows: int, cols: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rollout_log_prob = -torch.empty(rows, cols).exponential_(generator=g)  # [B, T]
    log_prob = (rollout_log_prob + 0.1 * torch.randn(rows, cols, generator=g)).clamp(max=0)
    advantages = torch.randn(rows, generator=g)  # [B]
    lengths = torch.randint(cols // 4, cols + 1, (rows,), generator=g)
    mask = (torch.arange(cols)[None, :] < lengths[:, None]).float()  # [B, T]
    return log_prob, rollout_log_prob, advantages, mask


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up: allocator and autograd graph caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ours(name, log_prob, rollout_log_prob, advantages, mask):
    loss = get_loss(name)
    old = rollout_log_prob if loss.hyper.anchor == "recompute" else None

    def step():
        lp = log_prob.detach().requires_grad_()
        out = loss(log_prob=lp, rollout_log_prob=rollout_log_prob, advantages=advantages, response_mask=mask,
                   old_log_prob=old)
        aggregate(out.per_token, mask, "token-mean").backward()

    return step


def bare_ppo(log_prob, rollout_log_prob, advantages, mask):
    adv = advantages[:, None]

    def step():
        lp = log_prob.detach().requires_grad_()
        ratio = torch.exp(lp - rollout_log_prob)
        loss = -(torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv) * mask).sum() / mask.sum()
        loss.backward()

    return step


class _VerlConfig(dict):
    """The fields verl's loss functions read from its actor config, nothing else."""

    __getattr__ = dict.get


def verl_step(name, log_prob, rollout_log_prob, advantages, mask):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    fn = get_policy_loss_fn(name)
    config = _VerlConfig(clip_ratio=0.2 if name == "vanilla" else 0.15, clip_ratio_low=None, clip_ratio_high=None,
                         clip_ratio_c=3.0 if name == "vanilla" else 20.0, global_batch_info={})
    adv = advantages[:, None].expand_as(log_prob)

    def step():
        lp = log_prob.detach().requires_grad_()
        loss, _ = fn(old_log_prob=rollout_log_prob, log_prob=lp, advantages=adv, response_mask=mask,
                     loss_agg_mode="token-mean", config=config)
        loss.backward()

    return step


def time_losses(rows: int, cols: int, repeats: int) -> None:
    tensors = make_inputs(rows, cols)
    results = {name: median_seconds(ours(name, *tensors), repeats)
               for name in sorted(LOSSES) if not LOSSES[name].needs_topk}
    bare = median_seconds(bare_ppo(*tensors), repeats)
    verl_rows = {}
    try:
        import verl  # noqa: F401
    except ImportError:
        print("(verl is not installed: its rows are left out)\n")
    else:
        for name in ("vanilla", "dppo_tv"):
            verl_rows[f"verl {name}"] = median_seconds(verl_step(name, *tensors), repeats)
    tokens = int(tensors[3].sum())
    print(f"Forward+backward, [{rows}, {cols}] float32 ({tokens:,} valid tokens), median of {repeats}, "
          f"{torch.get_num_threads()} threads\n")
    print("| loss | ms | vs ppo_clip | vs bare expression |")
    print("|---|---:|---:|---:|")
    rows_out = {**results, "bare ppo-clip expression (no metrics)": bare, **verl_rows}
    for name, seconds in rows_out.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / results['ppo_clip']:.2f}x | {seconds / bare:.2f}x |")
    print()


TOPK_CHILD = """
import json, resource, sys, torch
from drpo.losses import get_loss
mode, vocab, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
logits = torch.empty(1, rows, vocab).normal_(generator=g)  # in place: no transient copy in the baseline
ids = torch.randint(0, vocab, (1, rows, 8), generator=g)
topk_log_probs = torch.full((1, rows, 8), -3.0)
log_prob = torch.full((1, rows), -2.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "naive":
    pi = torch.log_softmax(logits, dim=-1).gather(-1, ids)
else:
    loss = get_loss("dppo_topk_tv")
    loss(log_prob=log_prob, rollout_log_prob=log_prob, advantages=torch.ones(1), response_mask=torch.ones(1, rows),
         rollout_topk_ids=ids, rollout_topk_log_probs=topk_log_probs, logits=logits, response_ids=ids[..., 0])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mib": (after - before) / 1024, "logits_mib": logits.numel() * 4 / 2**20}))
"""


def topk_memory(rows: int) -> None:
    print(f"Top-K divergence, peak extra memory beyond the logits ([1, {rows}, V] float32, k = 8)\n")
    print("| V | logits MiB | naive log_softmax extra MiB | ours extra MiB | ours / naive |")
    print("|---:|---:|---:|---:|---:|")
    for vocab in (32768, 151936):
        measured = {}
        for mode in ("naive", "ours"):
            child = subprocess.run([sys.executable, "-c", TOPK_CHILD, mode, str(vocab), str(rows)],
                                   capture_output=True, text=True, check=True)
            measured[mode] = json.loads(child.stdout)
        naive, mine = measured["naive"]["extra_mib"], measured["ours"]["extra_mib"]
        print(f"| {vocab} | {measured['naive']['logits_mib']:.0f} | {naive:.0f} | {mine:.0f} | {mine / naive:.1%} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--cols", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--topk-rows", type=int, default=4096, help="positions (B*T) for the Top-K memory test")
    args = parser.parse_args()
    time_losses(args.rows, args.cols, args.repeats)
    topk_memory(args.topk_rows)


if __name__ == "__main__":
    main()
