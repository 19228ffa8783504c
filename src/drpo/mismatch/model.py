"""The model mode: how far each rollout precision's mu is from the fp32 trainer, on the model's own rollouts.

    drpo mismatch model=tiny --precisions bf16 fp16 fp8 int8

For each precision the behavior policy of drpo.rollout (a copy of the policy in that precision, with
the same weights) samples responses to held-out prompts, recording mu; the fp32 policy then recomputes
pi_old of the same tokens (no gradients). The comparison is the engine mismatch of the file mode, and
the numbers go through the same statistics.
"""

from __future__ import annotations

import torch

from drpo.mismatch.format import TokenLogProbs, from_records, records_from_batch
from drpo.rollout import PRECISION_ROUNDS, BehaviorPolicy

DEFAULT_PRECISIONS = ("bf16", "fp16", "fp8", "int8")


@torch.no_grad()
def measure_precisions(config, precisions=DEFAULT_PRECISIONS, prompts: int = 32, samples: int = 4,
                       rows_per_forward: int = 16, console=None) -> list[TokenLogProbs]:
    """One TokenLogProbs per precision: mu from that precision's rollouts, pi_old from the fp32 policy.

    ``config``: a RunConfig (model, task, seed, rollout.temperature / top_p); ``prompts`` held-out prompts
    with ``samples`` responses each; ``rows_per_forward`` bounds the memory of the fp32 recomputation
    (rows x tokens x vocabulary logits).
    """
    from drpo.backends import build_policy

    unknown = [p for p in precisions if p not in PRECISION_ROUNDS]
    if unknown:
        raise ValueError(f"unknown precision(s) {', '.join(unknown)}; valid: {', '.join(PRECISION_ROUNDS)}")
    if prompts < 1 or samples < 1 or rows_per_forward < 1:
        raise ValueError(f"need prompts, samples and rows per forward >= 1; got {prompts}, {samples}, "
                         f"{rows_per_forward}")
    policy = build_policy(config, console=console)
    policy.model.eval()
    task = policy.task
    examples = list(task.eval[:prompts])
    encoded = [policy.encode_prompt(example) for example in examples]
    device = next(policy.model.parameters()).device
    temperature = config.rollout.temperature
    sources = []
    for precision in precisions:
        behavior = BehaviorPolicy(policy.model, precision)
        generator = torch.Generator(device).manual_seed(config.seed)  # every precision samples from one seed
        batch = behavior.generate(encoded, group_size=samples, max_new_tokens=task.max_response_len,
                                  temperature=temperature, top_p=config.rollout.top_p, generator=generator,
                                  eos_id=policy.tokenizer.eos_id, pad_id=policy.tokenizer.pad_id)
        del behavior  # one low-precision copy of the model at a time
        old_log_prob = torch.cat([policy.log_probs(batch.select(slice(start, start + rows_per_forward)),
                                                   temperature).log_prob
                                  for start in range(0, len(batch), rows_per_forward)])  # [N, T] fp32 pi_old
        records = records_from_batch(batch.rollout_log_prob, batch.response_mask, old_log_prob=old_log_prob,
                                     engine=f"drpo BehaviorPolicy {precision}")
        sources.append(from_records(records, label=precision, where=f"{config.model.name} rollouts in {precision}"))
        if console is not None:
            console.print(f"  {precision}: {len(records)} responses, {sources[-1].num_tokens} tokens")
    return sources
