"""Why does a trust region learn slower? The gradient of its loss split into two parts.

Every loss of drpo.losses has the gradient -w_t * r_t * A_t per token (docs/method.md, Eq. 1). Write w = 1 + (w - 1):

- the *policy-gradient part*, weight 1: the plain importance-sampled policy gradient r * A;
- the *pull part*, weight w - 1: what the trust region changes. For DRPO it is exactly the pull term
  -sign(A) * (pi - mu) / delta, which moves every token towards mu: negative (less push) where pi moved the
  way A pushes, positive (amplified) where it moved back. For DPPO it is -1 on the masked tokens, for PPO
  the clipped ones.

:func:`pull_gradient_norms` computes the parameter gradient of each part through the same aggregation as
the loss (their sum is the loss's own gradient, before clipping) and logs both norms and their ratio. It
costs two extra backward passes, so the trainer runs it only with ``diagnose_pull=true``, on the first
mini-batch of each step. The MoE load-balancing term is in neither part.
"""

from __future__ import annotations

import torch

from drpo.losses import LossOutput, aggregate


def pull_gradient_norms(parameters: list[torch.Tensor], log_prob: torch.Tensor, out: LossOutput,
                        advantages: torch.Tensor, response_mask: torch.Tensor, aggregation: str,
                        horizon: int | None) -> dict[str, float]:
    """diagnose/pg_grad_norm, diagnose/pull_grad_norm and diagnose/pull_to_pg (their ratio, when the first is > 0).

    ``log_prob`` [B, T] is the forward's log pi (its graph is kept: the caller backpropagates the loss after);
    ``out`` the loss output of that forward; ``advantages`` [B] or [B, T].
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    # d/d log pi of sg(c) * log pi is c: the surrogate whose gradient is -r * A (per unit weight)
    pg = (out.ratio * adv).neg_().to(log_prob.dtype).mul(log_prob)  # [B, T]
    pull = (out.weight - 1).to(log_prob.dtype) * pg  # [B, T] weight w - 1
    norms = {}
    for name, per_token in (("pg", pg), ("pull", pull)):
        loss = aggregate(per_token, response_mask, aggregation, horizon)
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        norms[name] = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.float()) for g in grads if g is not None])).item()
    metrics = {"diagnose/pg_grad_norm": norms["pg"], "diagnose/pull_grad_norm": norms["pull"]}
    if norms["pg"] > 0:  # all advantages 0 (no reward variance): no gradient at all, no ratio to log
        metrics["diagnose/pull_to_pg"] = norms["pull"] / norms["pg"]
    return metrics
