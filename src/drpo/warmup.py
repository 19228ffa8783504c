"""The built-in policy: the small transformer on a synthetic task, warm-started into the *base model*.

    policy = build_builtin_policy(config)       # a drpo.models.policy.Policy; policy.base_info says how it began

RL should start from a policy that is right sometimes but far from always, so :func:`warm_up` fine-tunes
the freshly initialised transformer on the task's targets until its greedy accuracy reaches
``warmup.target_accuracy``. The result is cached under ``$DRPO_CACHE/base/`` (drpo/paths.py) by a hash of
everything it depends on (:func:`base_model_key`), so every run and every method of a sweep starts from
the same weights. A pretrained model is its own base model (drpo/models/hf_policy.py), unless
``warmup.pretrained`` asks for the same fine-tuning on a task whose reply format it does not know (task=chain).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings

import numpy as np
import torch

from drpo.checkpoint import load_state_file
from drpo.display import step_progress
from drpo.models.log_probs import sequence_log_probs
from drpo.models.policy import Policy
from drpo.models.sampling import make_batch
from drpo.models.tokenizer import CharTokenizer
from drpo.models.transformer import build_model
from drpo.paths import cache_dir

WARMUP_VERSION = 2  # bump when the warm-up recipe changes, so stale cached base models are not reused


def build_builtin_policy(config, console=None, task=None) -> Policy:
    """The built-in transformer on a synthetic task, warm-started (or loaded from the cache).

    ``task``, when given, replaces config.task's (task=custom with Python objects)."""
    torch.manual_seed(config.seed)  # the base model's initialisation depends on the seed alone
    task = task or config.task.build(config.seed)
    tokenizer = CharTokenizer(extra_characters=getattr(task, "characters", ""))  # task=custom brings its alphabet
    model = build_model(config.model.name, tokenizer.vocab_size,
                        block_size=task.max_prompt_len + task.max_response_len + 1, moe=config.model.moe,
                        arch=config.model.arch)
    policy = Policy(model, tokenizer, task, text_engine=config.eval.engine)
    policy.base_info = load_or_warm_up(policy, config, console)
    return policy


def base_model_key(config, task=None) -> str:
    """Hash of everything the base model depends on: model, warm-up recipe, seed, and the task.

    A generated task (arith, sort) is its config. A task read from data (task=custom) is its rows
    (``task.fingerprint``: prompts and answers of both splits, which also fix the character vocabulary) and its
    lengths, not the config that names them: the same rows from a file, a datasets directory or Python objects,
    scored by any reward, make one base model (its warm-up probe compares with the reference answers,
    :func:`probe_accuracy`, so the reward does not decide when it stops).
    """
    model = config.model.model_dump()
    if model.get("arch") == "gpt":  # the default architecture keeps the key it had before model.arch existed
        del model["arch"]
    recipe = {"version": WARMUP_VERSION, "model": model, "warmup": _without_later_defaults(config.warmup, "warmup"),
              "seed": config.seed}
    if config.model.autocast == "bf16":  # the warm-up runs under it since it serves pretrained models too
        recipe["autocast_warmup"] = True
    if config.eval.engine != "trainer":  # the probe that stops the warm-up runs on it
        recipe["probe_engine"] = config.eval.engine
    if getattr(task, "fingerprint", None) is not None:
        recipe.update(data=task.fingerprint, lengths=[task.max_prompt_len, task.max_response_len])
    else:
        recipe["task"] = _without_later_defaults(config.task, "task")
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# config keys added after base models were published, with their defaults: at the default they leave out of the
# hash, so every base model made before they existed keeps its key
KEYS_ADDED_LATER = {"warmup": {"probe_prompts": 256, "pretrained": False}, "task": {"terms": None}}


def _without_later_defaults(section, name: str) -> dict:
    later = KEYS_ADDED_LATER[name]
    return {key: value for key, value in section.model_dump().items() if key not in later or value != later[key]}


def probe_accuracy(policy: Policy, examples: list) -> float:
    """The warm-up's stopping measure: greedy accuracy on ``examples`` under the task's verifier; for a task read
    from data, the share of greedy completions equal to the reference answer the warm-up imitates."""
    if getattr(policy.task, "fingerprint", None) is None:
        return policy.greedy_accuracy(examples)
    completions = policy.generate_text([policy.encode_prompt(ex) for ex in examples], 1, policy.task.max_response_len,
                                       temperature=0.0)
    return sum(text.strip() == policy.task.target(ex).strip() for text, ex in zip(completions, examples, strict=True)
               ) / len(examples)


def load_or_warm_up(policy: Policy, config, console=None) -> dict:
    path = cache_dir() / "base" / f"{base_model_key(config, policy.task)}.pt"
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


@torch.enable_grad()  # callers may build the policy under no_grad (drpo mismatch measures without gradients)
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
    probe = task.train[:cfg.probe_prompts]
    numerics = torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16,
                              enabled=config.model.autocast == "bf16")
    start = time.perf_counter()
    steps, accuracy = 0, None
    model.train()
    with step_progress(console, cfg.steps, 0, "warm-up (base model)", transient=True) as update:
        for steps in range(1, cfg.steps + 1):
            examples = [task.train[int(i)] for i in rng.integers(0, len(task.train), cfg.batch_size)]
            batch = make_batch([policy.encode_prompt(ex) for ex in examples],
                               [tokenizer.encode(task.target(ex)) + [tokenizer.eos_id] for ex in examples],
                               pad_id=tokenizer.pad_id)
            with numerics:
                log_prob, _, _ = sequence_log_probs(model, batch, temperature=1.0)
            mask = batch.response_mask
            loss = -(log_prob * mask).sum() / mask.sum() + 0.01 * model.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            checked = cfg.target_accuracy is not None and (steps % cfg.check_every == 0 or steps == cfg.steps)
            if checked:
                accuracy = probe_accuracy(policy, probe)  # generate_text restores train mode
            update(steps, f"loss {loss.item():.3f}" + ("" if accuracy is None else
                   f"  probe accuracy {accuracy:.3f} (target {cfg.target_accuracy})"), milestone=checked)
            if checked and accuracy >= cfg.target_accuracy:
                break
    model.eval()
    return {"warmup_steps": steps, "warmup_probe_accuracy": accuracy,
            "warmup_s": round(time.perf_counter() - start, 1), "parameters": sum(p.numel() for p in model.parameters())}
