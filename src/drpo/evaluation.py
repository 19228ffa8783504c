"""Held-out evaluation of a policy: greedy accuracy, and the mean accuracy of k samples (avg@k)."""

from __future__ import annotations

import numpy as np
import torch

from drpo.models.policy import Policy


@torch.no_grad()
def evaluate(policy: Policy, config, step: int) -> dict[str, float]:
    """Greedy accuracy on the first eval.prompts held-out prompts, and mean accuracy of eval.samples samples per
    prompt at the rollout temperature, drawn from a generator of their own (seeded by the seed and ``step``), so
    evaluating never moves training's random streams."""
    cfg, task = config.eval, policy.task
    examples = task.eval[: cfg.prompts]
    greedy_acc = policy.greedy_accuracy(examples)
    if cfg.samples == 0:
        return {"eval/accuracy": greedy_acc, "eval/prompts": len(examples)}
    prompts = [policy.encode_prompt(ex) for ex in examples]
    device = next(policy.model.parameters()).device
    generator = torch.Generator(device).manual_seed(config.seed + 10**6 + step)
    sampled = policy.generate_text(prompts, cfg.samples, task.max_response_len, config.rollout.temperature, generator)
    sampled_acc = float(np.nanmean(task.score(sampled, [examples[i // cfg.samples]
                                                        for i in range(len(sampled))]).rewards))
    task.verifier_errors(len(sampled))  # raises when most failed; a few count as wrong answers here
    # the sampled accuracy is avg@k (mean over k samples per problem), as in AIME avg@16 reports
    return {"eval/accuracy": greedy_acc, "eval/sampled_accuracy": sampled_acc, f"eval/avg@{cfg.samples}": sampled_acc,
            "eval/prompts": len(examples)}  # fewer than eval.prompts when the eval split is smaller
