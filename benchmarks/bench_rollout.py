"""Sampling throughput with and without the KV cache, per model size; prints a markdown table.

Every row generates exactly ``--new-tokens`` tokens (EOS is disabled), from arith prompts, with the fp32
behavior policy. Without the cache each step recomputes the whole prefix, so its cost grows with the
response length; with it each step feeds one token per row.

    python benchmarks/bench_rollout.py                       # all sizes, batch 64, 64 new tokens
    python benchmarks/bench_rollout.py --sizes tiny --repeats 1
"""

from __future__ import annotations

import argparse
import time

import torch

from drpo.behavior.native import NativeBehavior
from drpo.models import SIZES, CharTokenizer, build_model
from drpo.models.sampling import generate
from drpo.tasks import get_task


def tokens_per_second(behavior: NativeBehavior, prompts, new_tokens: int, use_cache: bool, repeats: int) -> float:
    tok = CharTokenizer()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        # eos_id=-1 matches no token, so no row stops early and every run does the same work
        # the sampler on the behavior's model: use_cache is the sampler's switch, not the behavior's
        batch = generate(behavior.model, prompts, 1, new_tokens, use_cache=use_cache,
                         generator=torch.Generator().manual_seed(0), eos_id=-1, pad_id=tok.pad_id)
        best = min(best, time.perf_counter() - start)
    return batch.response_mask.sum().item() / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--moe", action="store_true", help="the mixture-of-experts variant")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok, task = CharTokenizer(), get_task("arith", n_train=args.batch, n_eval=1)
    prompts = [tok.encode(example.prompt, bos=True) for example in task.train]
    block_size = task.max_prompt_len + args.new_tokens
    print(f"batch {args.batch}, {args.new_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {'MoE' if args.moe else 'dense'}\n")
    print("| size | params | KV cache (tok/s) | no cache (tok/s) | speed-up |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        torch.manual_seed(0)
        model = build_model(size, tok.vocab_size, block_size, moe=args.moe)
        behavior = NativeBehavior(model)
        tokens_per_second(behavior, prompts[:4], 4, True, 1)  # warm-up: first-call allocations
        cached = tokens_per_second(behavior, prompts, args.new_tokens, True, args.repeats)
        uncached = tokens_per_second(behavior, prompts, args.new_tokens, False, args.repeats)
        print(f"| {size} | {model.num_parameters() / 1e6:.2f}M | {cached:,.0f} | {uncached:,.0f} | "
              f"{cached / uncached:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
