"""The policy being trained: model + tokenizer + task, and the base model it starts from.

The trainer talks to a :class:`Policy` only, so the built-in transformer and a Hugging Face model
(drpo.models.hf) are interchangeable. For the built-in model, :func:`build_policy` first makes the
*base model*: a supervised warm-up on the task that leaves the policy right sometimes but far from
always, cached under ``$DRPO_CACHE`` (default ``~/.cache/drpo``) by a hash of everything it depends on.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from drpo.checkpoint import load_state_file
from drpo.models.tokenizer import CharTokenizer
from drpo.models.transformer import build_model
from drpo.rollout import RolloutBatch, generate, make_batch, sequence_log_probs

WARMUP_VERSION = 2  # bump when the warm-up recipe changes, so stale cached base models are not reused
WARMUP_PROBE_PROMPTS = 256  # training prompts whose greedy accuracy ends the warm-up


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: CharTokenizer
    task: object
    base_info: dict = field(default_factory=dict)

    def encode_prompt(self, example) -> list[int]:
        return self.tokenizer.encode(example.prompt, bos=True)

    def decode_responses(self, batch: RolloutBatch) -> list[str]:
        return [self.tokenizer.decode(row) for row in batch.response_ids.tolist()]

    def log_probs(self, batch: RolloutBatch, temperature: float):
        """log pi [N, T], entropy [N, T] and scaled logits [N, T, V] of the batch's responses, with gradients."""
        return sequence_log_probs(self.model, batch, temperature)

    def greedy_accuracy(self, examples: list) -> float:
        """Fraction of ``examples`` whose greedy completion the task's verifier accepts."""
        completions = self.generate_text([self.encode_prompt(ex) for ex in examples], 1, self.task.max_response_len,
                                         temperature=0.0)
        return float(np.mean([self.task.reward(text, ex) for text, ex in zip(completions, examples, strict=True)]))

    @torch.no_grad()
    def generate_text(self, prompts: list[list[int]], samples: int, max_new_tokens: int, temperature: float,
                      generator: torch.Generator | None = None) -> list[str]:
        """``samples`` completions per prompt from the trained policy itself (fp32); temperature 0 is greedy."""
        was_training = self.model.training
        self.model.eval()
        batch = generate(self.model, prompts, samples, max_new_tokens, temperature, generator=generator,
                         eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id)
        self.model.train(was_training)
        return self.decode_responses(batch)


def build_policy(config, console=None) -> Policy:
    """The built-in transformer on a synthetic task, warm-started (or loaded from the cache)."""
    from drpo.models.gguf import is_pretrained_name

    if is_pretrained_name(config.model.name):
        from drpo.models.hf import build_hf_policy

        return build_hf_policy(config, console=console)
    torch.manual_seed(config.seed)  # the base model's initialisation depends on the seed alone
    task = config.task.build(config.seed)
    tokenizer = CharTokenizer()
    model = build_model(config.model.name, tokenizer.vocab_size,
                        block_size=task.max_prompt_len + task.max_response_len + 1, moe=config.model.moe)
    policy = Policy(model, tokenizer, task)
    policy.base_info = load_or_warm_up(policy, config, console)
    return policy


def base_model_key(config) -> str:
    """Hash of everything the base model depends on: model, task, warm-up recipe, seed."""
    recipe = {"version": WARMUP_VERSION, "model": config.model.model_dump(), "task": config.task.model_dump(),
              "warmup": config.warmup.model_dump(), "seed": config.seed}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("DRPO_CACHE", Path.home() / ".cache" / "drpo"))


def load_or_warm_up(policy: Policy, config, console=None) -> dict:
    path = cache_dir() / "base" / f"{base_model_key(config)}.pt"
    if path.exists():
        saved = load_state_file(path)  # tensors and plain values only: a cache file cannot run code
        policy.model.load_state_dict(saved["model"])
        return checked_target({**saved["info"], "cached": True, "path": str(path)}, config.warmup.target_accuracy)
    info = warm_up(policy, config, console)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save({"model": policy.model.state_dict(), "info": info}, tmp)
    os.replace(tmp, path)  # concurrent sweeps may warm up the same base model: last rename wins, both valid
    return checked_target({**info, "cached": False, "path": str(path)}, config.warmup.target_accuracy)


def checked_target(info: dict, target: float | None) -> dict:
    """``info`` plus ``missed_target``: the warm-up ended at its step cap short of ``target`` (then a warning).

    RL from such a base model may find no reward signal at all, and a comparison of methods over it would
    rank noise; summary.json records the flag and `drpo compare` refuses to name a winner over it.
    """
    accuracy = info.get("warmup_probe_accuracy")
    missed = target is not None and (accuracy is None or accuracy < target)
    if missed:
        warnings.warn(f"the base model missed its warm-up target: greedy probe accuracy {accuracy} after "
                      f"{info.get('warmup_steps')} steps (the warmup.steps cap) is below warmup.target_accuracy="
                      f"{target}, so RL from it may find no reward signal; raise warmup.steps, or use a larger model "
                      "or an easier task", stacklevel=3)
    return {**info, "warmup_target_accuracy": target, "missed_target": missed}


def warm_up(policy: Policy, config, console=None) -> dict:
    """Supervised fine-tuning on task targets: maximise log pi(target + EOS | prompt).

    Deliberately short: RL should start from a policy that is right sometimes, not always. It stops as soon
    as greedy accuracy on a fixed probe of training prompts (never the eval split) reaches
    ``warmup.target_accuracy``, checked every ``warmup.check_every`` steps, or after ``warmup.steps``.
    """
    cfg = config.warmup
    model, task, tokenizer = policy.model, policy.task, policy.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 20))
    rng = np.random.default_rng(config.seed + 1)
    probe = task.train[:WARMUP_PROBE_PROMPTS]
    start = time.perf_counter()
    steps, accuracy = 0, None
    model.train()
    for steps in _maybe_progress(range(1, cfg.steps + 1), console, "warm-up (base model)"):
        examples = [task.train[int(i)] for i in rng.integers(0, len(task.train), cfg.batch_size)]
        batch = make_batch([policy.encode_prompt(ex) for ex in examples],
                           [tokenizer.encode(task.target(ex)) + [tokenizer.eos_id] for ex in examples],
                           pad_id=tokenizer.pad_id)
        log_prob, _, _ = sequence_log_probs(model, batch, temperature=1.0)
        mask = batch.response_mask
        loss = -(log_prob * mask).sum() / mask.sum() + 0.01 * model.aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if cfg.target_accuracy is not None and (steps % cfg.check_every == 0 or steps == cfg.steps):
            accuracy = policy.greedy_accuracy(probe)  # generate_text restores train mode
            if accuracy >= cfg.target_accuracy:
                break
    model.eval()
    return {"warmup_steps": steps, "warmup_probe_accuracy": accuracy,
            "warmup_s": round(time.perf_counter() - start, 1), "parameters": sum(p.numel() for p in model.parameters())}


def _maybe_progress(iterable, console, description: str):
    from rich.progress import track

    return track(iterable, description=description, console=console, transient=True)
