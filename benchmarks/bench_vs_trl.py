"""Seconds per RL step: TRL's GRPOTrainer against drpo's Trainer, same model, prompts and lengths.

    python benchmarks/bench_vs_trl.py                              # tiny (16, 64 tokens) and smollm2 (16), fp32
    python benchmarks/bench_vs_trl.py --models tiny --dtype fp32 bf16 --json results.json
    python benchmarks/bench_vs_trl.py --models smollm2 --dtype bf16-amp   # mixed precision, both sides
    python benchmarks/bench_vs_trl.py --models tiny --tokens 8 --steps 2 --warmup 1   # smoke test

One step = 8 plain-text prompts ("What is 23 + 45?", no chat template) x 8 samples = 64 completions of
exactly ``--tokens`` new tokens each (TRL: min_new_tokens = max_completion_length; drpo:
rollout.ignore_eos), then one optimizer step on all 64 (TRL: steps_per_generation=1, num_iterations=1,
beta=0; drpo: updates_per_batch=1, loss=ppo_clip), on the CPU, gradient checkpointing off, the same
torch thread count, on both sides fp32, bf16 weights, or bf16 autocast over fp32 weights (bf16-amp). Each
(model, dtype, tokens, side) runs in a fresh child process, so the peak resident memory (ru_maxrss) is that
side's alone, imports included. Time it on an idle machine: with fewer free cores than threads, OpenMP's
waiting turns the tiny model's steps from tenths of a second into seconds.

Columns, each its own median over ``--steps`` steps after ``--warmup`` (so they need not add up to step s):
- gen s: sampling (TRL: ``_generate_single_turn``; drpo: time/rollout_s, prompt encoding included);
- logprob s: no-grad log-prob forwards (pi_old); neither side needs one with a single update per batch;
- train s: forward with grad, backward, clipping, optimizer step (TRL: step minus scoring; drpo:
  time/update_s minus logprob);
- other s: the rest of the step: decoding, rewards, advantages, batching (TRL: the rest of
  ``_generate_and_score_completions``); drpo also syncs the weights into its behavior copy here;
- step s: the whole step (TRL: on_step_begin to on_step_end; drpo: the train_step() call).

% matmul peak = step FLOPs / (step s x the torch.mm peak in that dtype and thread count). Step FLOPs are
the nominal work, the same for both sides: one forward costs 2 x (non-embedding + output-head
parameters) per token over prompt + completion for 64 rows; generation (prefill + decode) is one such
forward, training three (forward + backward), each no-grad log-prob pass one more. Attention FLOPs are
ignored, and so are the savings both sides make (no output head over prompt positions; drpo prefills
each prompt once for its 8 samples): the figure puts both sides' speed in one unit, it is not an exact
utilization.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

import torch

PROMPTS, GROUP = 8, 8
ROWS = PROMPTS * GROUP  # completions per step
SIDES = ("trl", "drpo")
# each mode's matmul dtype. bf16: the weights themselves in bf16 on both sides; bf16-amp: bf16 autocast over
# float32 weights (TRL's bf16=True on a float32 model; drpo's model.autocast=bf16 with bf16 rollouts)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16-amp": torch.bfloat16}
DEFAULT_TOKENS = {"tiny": [16, 64], "smollm2": [16]}
RESULT_PREFIX = "BENCH_RESULT "  # marks the child's result line among whatever TRL prints to stdout
PHASES = ("gen_s", "logprob_s", "train_s", "other_s", "step_s")


# --------------------------------------------------------------------------------------------- inputs
def make_problems(count: int, seed: int) -> list[dict]:
    """Distinct two-digit sums: every prompt has the same length in characters (and nearly in tokens)."""
    pairs = random.Random(seed).sample([(a, b) for a in range(10, 100) for b in range(10, 100)], count)
    return [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in pairs]


def build_tiny_model(directory: Path, seed: int) -> Path:
    """A random Qwen2 (hidden 128, 4 layers) with a byte-level tokenizer, saved with save_pretrained.

    One token per byte (a BPE without merges): AutoTokenizer loads a qwen2 directory as Qwen2Tokenizer, which
    puts back Qwen's byte-level pre-tokenizer; a byte vocabulary survives that, a plain character one would not.
    """
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers

    vocab = ["<pad>", "<eos>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                     clean_up_tokenization_spaces=False)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def model_directory(name: str, tmp: Path, seed: int) -> Path:
    if name == "tiny":
        return build_tiny_model(tmp / "tiny", seed)
    from drpo.models.gguf import resolve_model_dir

    return resolve_model_dir("smollm2-135m")


# --------------------------------------------------------------------------------------------- measuring
class PhaseTimer:
    """Seconds and calls inside wrapped methods since the last :meth:`take`, per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, name: str, phase: str, when=lambda: True) -> None:
        """Time ``owner.name`` (an instance attribute shadows the class's method) whenever ``when()`` holds."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if not when():
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - start
                self.calls[phase] += 1

        setattr(owner, name, timed)

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        taken = dict(self.seconds), dict(self.calls)
        self.seconds.clear()
        self.calls.clear()
        return taken


def no_grad() -> bool:
    return not torch.is_grad_enabled()


def flop_params(model) -> int:
    """Parameters a token's forward multiplies by: all but the input embedding, plus the output head (tied or not)."""
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once here
    return total - model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()


def step_flops(params: int, prompt_tokens: float, new_tokens: int, logprob_passes: float) -> float:
    forward = 2 * params * ROWS * (prompt_tokens + new_tokens)
    return forward * (1 + 3 + logprob_passes)  # generation, training forward + backward, no-grad log-probs


def matmul_peak_gflops(dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    out = torch.mm(a, b)  # warm-up: the kernel choice and the output buffer
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


# --------------------------------------------------------------------------------------------- the two sides
def run_trl(args, problems: list[dict], out: Path) -> tuple[list[dict], int, float]:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    new_tokens, dtype = args.tokens[0], args.dtype[0]

    def contains_sum(completions, answer, **kwargs) -> list[float]:
        return [float(a in c) for c, a in zip(completions, answer, strict=True)]

    class StepTimer(TrainerCallback):
        def __init__(self, phases: PhaseTimer) -> None:
            self.phases, self.records, self.lengths = phases, [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.phases.take()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.start
            seconds, calls = self.phases.take()
            gen, logprob, score = seconds.get("gen", 0.0), seconds.get("logprob", 0.0), seconds.get("score", 0.0)
            self.records.append({"step_s": step_s, "gen_s": gen, "logprob_s": logprob, "train_s": step_s - score,
                                 "other_s": score - gen - logprob, "logprob_passes": calls.get("logprob", 0)})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "completions/min_length" in logs:
                self.lengths += [logs["completions/min_length"], logs["completions/max_length"]]

    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=ROWS, num_generations=GROUP, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, beta=0.0, max_steps=args.warmup + args.steps,
        max_completion_length=new_tokens, generation_kwargs={"min_new_tokens": new_tokens}, temperature=1.0,
        learning_rate=1e-6, gradient_checkpointing=False, use_cpu=True, bf16=dtype != "fp32",
        # bf16=True alone autocasts over fp32 weights (bf16-amp); loading them in bf16 matches drpo's model.dtype=bf16
        model_init_kwargs={"dtype": "bfloat16" if dtype == "bf16" else "float32", "attn_implementation": "sdpa"},
        disable_dropout=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0, seed=args.seed)
    trainer = GRPOTrainer(model=str(args.model_dir), reward_funcs=[contains_sum], args=config,
                          train_dataset=datasets.Dataset.from_list(problems))
    phases = PhaseTimer()
    phases.wrap(trainer, "_generate_single_turn", "gen")
    phases.wrap(trainer, "_get_per_token_logps_and_entropies", "logprob", when=no_grad)  # not the update's forward
    phases.wrap(trainer, "_generate_and_score_completions", "score")
    timer = StepTimer(phases)
    trainer.add_callback(timer)
    trainer.train()
    if not timer.lengths or set(timer.lengths) != {new_tokens}:
        raise RuntimeError(f"TRL completions were not all {new_tokens} tokens: logged min/max {timer.lengths}")
    prompt_ids = trainer.processing_class(text=[p["prompt"] for p in problems])["input_ids"]
    return timer.records, flop_params(trainer.model), statistics.mean(map(len, prompt_ids))


def run_drpo(args, problems: list[dict], out: Path) -> tuple[list[dict], int, float]:
    from drpo.config import load_config
    from drpo.trainer import Trainer

    new_tokens, dtype = args.tokens[0], args.dtype[0]
    data = out / "problems.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    config = load_config(None, [
        f"model=hf:{args.model_dir}", f"model.dtype={'bf16' if dtype == 'bf16' else 'fp32'}",
        f"model.autocast={'bf16' if dtype == 'bf16-amp' else 'none'}", "model.device=cpu", "model.chat_template=false",
        # eval_data = the same file: all problems train, as in TRL's data set (evaluation never runs here)
        "task=math", f"data={data}", f"task.eval_data={data}", "task.prompt_template={prompt}",
        f"task.max_response_len={new_tokens}", "rollout.prompts=8", "rollout.group_size=8",
        f"rollout.precision={'fp32' if dtype == 'fp32' else 'bf16'}", "rollout.ignore_eos=true", "updates_per_batch=1", "loss=ppo_clip",
        "advantage.std_normalize=true", "optim.lr=1e-6", f"steps={args.warmup + args.steps}", f"seed={args.seed}",
        f"out={out / 'run'}", "tensorboard=false"])
    trainer = Trainer(config)
    phases = PhaseTimer()
    phases.wrap(trainer.policy, "log_probs", "logprob", when=no_grad)  # pi_old only: the update's forward has grad
    records = []
    for _ in range(args.warmup + args.steps):
        phases.take()
        start = time.perf_counter()
        metrics = trainer.train_step()
        step_s = time.perf_counter() - start
        seconds, calls = phases.take()
        if metrics["response_length/mean"] != new_tokens:  # each row has at most new_tokens: the mean pins them all
            raise RuntimeError(f"drpo responses were not all {new_tokens} tokens: mean "
                               f"{metrics['response_length/mean']}")
        rollout, update, logprob = metrics["time/rollout_s"], metrics["time/update_s"], seconds.get("logprob", 0.0)
        records.append({"step_s": step_s, "gen_s": rollout, "logprob_s": logprob, "train_s": update - logprob,
                        "other_s": step_s - rollout - update, "logprob_passes": calls.get("logprob", 0)})
    prompt_tokens = statistics.mean(len(trainer.policy.encode_prompt(ex)) for ex in trainer.task.train)
    return records, flop_params(trainer.model.hf), prompt_tokens


def run_child(args) -> dict:
    torch.set_num_threads(args.threads)
    problems = make_problems(PROMPTS * (args.warmup + args.steps), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = run_trl if args.child == "trl" else run_drpo
        records, params, prompt_tokens = run(args, problems, Path(tmp))
    if torch.get_num_threads() != args.threads:
        raise RuntimeError(f"the {args.child} side changed torch's thread count to {torch.get_num_threads()}")
    timed = records[args.warmup:]
    return {**{key: statistics.median(r[key] for r in timed) for key in (*PHASES, "logprob_passes")},
            "peak_rss_mib": peak_rss_mib(), "flop_params": params, "prompt_tokens": prompt_tokens}


# --------------------------------------------------------------------------------------------- the parent
def run_cell(args, side: str, model_dir: Path, new_tokens: int, dtype: str) -> dict:
    command = [sys.executable, __file__, "--child", side, "--model-dir", str(model_dir), "--tokens", str(new_tokens),
               "--dtype", dtype, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--seed", str(args.seed)]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)  # stderr: straight through
    line = next(line for line in reversed(child.stdout.splitlines()) if line.startswith(RESULT_PREFIX))
    return json.loads(line.removeprefix(RESULT_PREFIX))


def summarize(cell: dict, new_tokens: int, peak_gflops: float) -> dict:
    flops = step_flops(cell["flop_params"], cell["prompt_tokens"], new_tokens, cell["logprob_passes"])
    return {**cell, "step_gflop": flops / 1e9, "tokens_per_s": ROWS * new_tokens / cell["step_s"],
            "matmul_peak_fraction": flops / (cell["step_s"] * peak_gflops * 1e9)}


def table_row(row: dict) -> str:
    phases = " | ".join(f"{row[key]:.3f}" for key in PHASES)
    return (f"| {row['model']} | {row['dtype']} | {row['new_tokens']} | {row['side']} | {phases} | "
            f"{row['tokens_per_s']:,.0f} | {row['peak_rss_mib']:,.0f} | {row['matmul_peak_fraction']:.1%} |")


def print_ratios(rows: list[dict]) -> None:
    print("\ndrpo / TRL (step time and memory: lower is better for drpo; tokens/s: higher is)\n")
    print("| model | dtype | new tokens | step time | tokens/s | peak RSS |")
    print("|---|---|---:|---:|---:|---:|")
    cells = defaultdict(dict)
    for row in rows:
        cells[row["model"], row["dtype"], row["new_tokens"]][row["side"]] = row
    for (model, dtype, new_tokens), sides in cells.items():
        ours, trl = sides["drpo"], sides["trl"]
        print(f"| {model} | {dtype} | {new_tokens} | {ours['step_s'] / trl['step_s']:.2f}x | "
              f"{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x | {ours['peak_rss_mib'] / trl['peak_rss_mib']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_TOKENS), choices=list(DEFAULT_TOKENS))
    parser.add_argument("--tokens", nargs="+", type=int, default=None,
                        help="new tokens per completion, for every model (default: tiny 16 64, smollm2 16)")
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=list(DTYPES))
    parser.add_argument("--steps", type=int, default=8, help="timed steps (medians)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads, all sides")
    parser.add_argument("--matmul-size", type=int, default=2048, help="square matrices of the matmul peak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)  # one cell, in its own process
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_child(args)), flush=True)
        return

    torch.set_num_threads(args.threads)
    peaks = {dtype: matmul_peak_gflops(DTYPES[dtype], args.matmul_size) for dtype in args.dtype}
    print(f"RL step, TRL GRPOTrainer vs drpo Trainer: {PROMPTS} prompts x {GROUP} samples, CPU, median of "
          f"{args.steps} steps after {args.warmup} warm-up")
    print(f"torch {torch.__version__}, transformers {version('transformers')}, trl {version('trl')}; "
          f"{args.threads} threads, {cpu_name()}")
    measured = ", ".join(f"{dtype} {gflops:,.1f} GFLOP/s" for dtype, gflops in peaks.items())
    print(f"matmul peak (torch.mm, {args.matmul_size}^2 in each dtype): {measured}\n")
    print("| model | dtype | new tokens | side | gen s | logprob s | train s | other s | step s (median) | tokens/s | "
          "peak RSS MiB | % matmul peak |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            model_dir = model_directory(model, Path(tmp), args.seed)
            for dtype in args.dtype:
                for new_tokens in args.tokens or DEFAULT_TOKENS[model]:
                    for side in SIDES:
                        cell = run_cell(args, side, model_dir, new_tokens, dtype)
                        row = {"model": model, "dtype": dtype, "new_tokens": new_tokens, "side": side,
                               **summarize(cell, new_tokens, peaks[dtype])}
                        rows.append(row)
                        print(table_row(row), flush=True)
    print_ratios(rows)
    if args.json:
        args.json.write_text(json.dumps({
            "torch": torch.__version__, "transformers": version("transformers"), "trl": version("trl"),
            "cpu": cpu_name(), "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
            "matmul_gflops": peaks, "matmul_size": args.matmul_size, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
