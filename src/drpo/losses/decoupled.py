"""The baselines frameworks ship against training-inference mismatch: decoupled PPO with a rollout
correction (verl's rollout correction, TRL's vLLM importance-sampling correction) and GSPO.

Decoupled PPO has three policies: mu, the sampler (rollout_log_prob); pi_old, the trainer's recompute of
the weights that sampled (old_log_prob); and pi. PPO's clip acts on r = pi / pi_old, the anchor; mu enters
only through the importance weight rho = pi_old / mu, a constant of the update (no gradient flows through
it), corrected in one of two ways:

- truncate (TIS): rho -> clamp(rho, is_low, is_high) (verl rollout_is_threshold=C; TRL *_truncate);
- mask (MIS, IcePop): rho -> 0 outside [is_low, is_high] (verl "lower_upper" thresholds and rejection
  sampling rollout_rs; TRL *_mask),

per token, per sequence (rho_seq = prod_t rho_t, verl rollout_is="sequence", TRL sequence_*), or per
sequence by the geometric mean exp(mean_t log rho_t) (verl's seq_mean_k1 rejection, "Geo-RS").
"""

from __future__ import annotations

from typing import Literal

import pydantic
import torch

from drpo.losses.inputs import LOG_RATIO_CLAMP, LossInputs
from drpo.losses.ratio import PpoClipHyper, ppo_clip
from drpo.losses.registry import ConfigMap, Hyper, LabMethod, Preset, register_loss


class DecoupledPpoHyper(PpoClipHyper):
    anchor: Literal["recompute"] = pydantic.Field(
        "recompute", description="PPO's clip is on pi/pi_old (old_log_prob, recomputed by the trainer); mu enters "
        "only through the IS weight pi_old/mu")
    level: Literal["token", "sequence", "geometric"] = pydantic.Field(
        "token", description="IS weight per token, per sequence (product over the response) or per sequence by "
        "the geometric mean")
    mode: Literal["truncate", "mask"] = pydantic.Field(
        "truncate", description="truncate: clamp the IS weight to [is_low, is_high] (TIS); mask: zero it outside "
        "(MIS, IcePop)")
    is_low: float | None = pydantic.Field(None, gt=0.0, description="lower bound of the IS weight (None: none)")
    is_high: float | None = pydantic.Field(
        2.0, gt=0.0, description="upper bound of the IS weight (2.0: verl's rollout_is_threshold; None: none)")

    @pydantic.model_validator(mode="after")
    def _ordered_bounds(self):
        if self.is_low is not None and self.is_high is not None and self.is_low >= self.is_high:
            raise ValueError(f"is_low={self.is_low} must be below is_high={self.is_high}")
        return self


def rollout_weight(x: LossInputs, level: str) -> torch.Tensor:
    """rho = pi_old / mu per token [B, T], or per sequence [B, 1] (product or geometric mean over the
    response); the log is clamped at +-20 like the ratio's, so a sequence's product cannot overflow."""
    log_rho = (x.anchor_log_prob - x.rollout_log_prob).mul_(x.mask_f)  # [B, T], 0 on padding
    if level != "token":
        log_rho = log_rho.sum(-1, keepdim=True)  # [B, 1]
        if level == "geometric":
            log_rho = log_rho.div_(x.mask_f.sum(-1, keepdim=True).clamp_(min=1))
    return log_rho.clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp_()


@register_loss(
    "decoupled_ppo", DecoupledPpoHyper,
    "decoupled PPO: clip on pi/pi_old times a truncated or masked IS weight pi_old/mu (token/sequence)",
    # verl's rollout correction is decoupled PPO: loss_mode=vanilla with the IS weight pi_old/mu that
    # algorithm.rollout_correction computes (drpo/integrations/README.md maps each preset to its options)
    verl=ConfigMap(refused="verl's own rollout correction: loss_mode=vanilla with algorithm.rollout_correction."
                   "rollout_is (token | sequence), rollout_is_threshold (C, or 'low_high' for a mask) and rollout_rs "
                   "(rejection)"),
    # TRL's too: its vLLM importance-sampling weight; ours beside TRL's would apply the correction twice
    trl=ConfigMap(refused="decoupled PPO's IS weight pi_old / mu is TRL's vLLM correction: use drpo_loss="
                  "'ppo_clip_recompute' (or ppo_clip with anchor='recompute') and set vllm_importance_sampling_mode "
                  "(token_truncate = ppo_tis, token_mask = ppo_mis, sequence_truncate = ppo_seq_tis, sequence_mask = "
                  "ppo_seq_mis) with vllm_importance_sampling_clip_min / clip_max (the presets' is_low / is_high), or "
                  "GRPOTrainer"),
    presets=(
        # the thresholds as the sources ship them: verl RolloutCorrectionConfig.decoupled_token_is(threshold=2.0);
        # TRL token_truncate
        Preset("ppo_tis", {"level": "token", "mode": "truncate", "is_high": 2.0}, order=40),
        # IcePop's two-sided token mask, verl decoupled_token_icepop(threshold=5.0, threshold_lower=0.5)
        Preset("ppo_mis", {"level": "token", "mode": "mask", "is_low": 0.5, "is_high": 5.0}, order=50),
        # verl decoupled_seq_is(threshold=2.0): the product of pi_old/mu over the response, truncated
        Preset("ppo_seq_tis", {"level": "sequence", "mode": "truncate", "is_high": 2.0}, order=60),
        # verl decoupled_seq_is_rs(rs_threshold="0.5_2.0"): sequences whose product leaves [0.5, 2] are rejected
        Preset("ppo_seq_mis", {"level": "sequence", "mode": "mask", "is_low": 0.5, "is_high": 2.0}, order=70),
        # verl decoupled_geo_rs(rs_threshold="0.999_1.001"): rejection by the geometric mean (no IS weight in
        # verl's preset; here the kept sequences keep their weight, within 0.1% of 1)
        Preset("ppo_geo_mis", {"level": "geometric", "mode": "mask", "is_low": 0.999, "is_high": 1.001}, order=80),
        # MiniRL (Zheng et al. 2025, "Stabilizing Reinforcement Learning with LLMs: Formulation and Practices"):
        # J = M_t * sg(pi/mu) * A * log pi, M_t the clip-higher mask on pi/pi_old; sg(pi/mu) = r * pi_old/mu,
        # i.e. decoupled PPO with the token IS weight pi_old/mu, which the formulation does not truncate
        Preset("minirl", {"eps_low": 0.2, "eps_high": 0.28, "level": "token", "mode": "truncate", "is_high": None},
               order=90),
    ),
    # what verl and TRL users run against mismatch: decoupled PPO with a rollout correction pi_old/mu
    methods=(
        LabMethod("ppo_tis", loss="ppo_tis", order=50),  # token TIS at 2 (verl decoupled_token_is)
        LabMethod("ppo_mis", loss="ppo_mis", order=60),  # IcePop's two-sided token mask [0.5, 5] (decoupled_token_icepop)
        LabMethod("ppo_seq_tis", loss="ppo_seq_tis", order=70),  # sequence product truncated at 2 (decoupled_seq_is)
        LabMethod("ppo_seq_mis", loss="ppo_seq_mis", order=80),  # product outside [0.5, 2] rejected (decoupled_seq_is_rs)
        LabMethod("minirl", loss="minirl", order=90),  # MiniRL as published: clip-higher on pi/pi_old times pi_old/mu
    ),
)
def decoupled_ppo(x: LossInputs, h: DecoupledPpoHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy optimization": the clip on pi_old,
    the behavior policy in an importance weight) with a rollout correction of that weight.

    J_t = sg(c(rho_t)) * min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t),  r_t = pi_t / pi_old_t,
    rho_t = pi_old_t / mu_t; c truncates rho to [is_low, is_high] or zeroes it outside, and rho is per token or
    one value per sequence (module docstring).
    w_t = c(rho_t) * m_t, m_t PPO's 0/1 clip weight on r_t (``ppo_clip``, dual-clip included).
    Sources: verl's rollout correction in decoupled mode (trainer/ppo/rollout_corr_helper.py), TRL's
    vllm_importance_sampling_mode (GRPOTrainer), Yao et al. 2025 "Your efficient RL framework secretly
    brings you off-policy RL training" (TIS), IcePop (Ring-1T, 2025: the two-sided token mask).
    """
    objective, mask = ppo_clip(x, h)  # [B, T] each
    rho = rollout_weight(x, h.level)  # [B, T] or [B, 1]
    if h.mode == "truncate":
        if h.is_low is not None or h.is_high is not None:
            rho = rho.clamp_(min=h.is_low, max=h.is_high)
    else:
        low = 0.0 if h.is_low is None else h.is_low
        high = torch.inf if h.is_high is None else h.is_high
        rho = rho.mul_((rho >= low) & (rho <= high))
    return objective.mul_(rho), mask.mul_(rho)


class GspoHyper(Hyper):
    anchor: Literal["rollout", "recompute"] = pydantic.Field(
        "recompute", description="reference of the sequence ratio: recompute = pi_old (the paper's pi_theta_old, "
        "as verl computes it), rollout = mu")
    eps_low: float = pydantic.Field(3e-4, gt=0.0, lt=1.0, description="lower clip of the sequence ratio (paper: 3e-4)")
    eps_high: float = pydantic.Field(4e-4, gt=0.0, description="upper clip of the sequence ratio (paper: 4e-4)")


@register_loss(
    "gspo", GspoHyper, "GSPO: PPO clip on the length-normalised sequence ratio (pi/anchor)^(1/|y|)",
    verl=ConfigMap(refused="verl ships its own 'gspo' (loss_mode=gspo, clip_ratio_low=3e-4, clip_ratio_high=4e-4)"),
    trl=ConfigMap(refused="TRL has GSPO: GRPOTrainer with importance_sampling_level='sequence', epsilon=3e-4, "
                  "epsilon_high=4e-4"),
    methods=(LabMethod("gspo", order=100),),  # sequence ratio clipped at 1 -3e-4/+4e-4, anchored on pi_old
)
def gspo(x: LossInputs, h: GspoHyper) -> tuple[torch.Tensor, torch.Tensor]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", Eqs. 5-7): PPO's clip on the sequence's
    length-normalised ratio s_i = exp(mean_t log(pi_t / anchor_t)), one value per response.

    J_t = min(s A_t, clip(s, 1 - eps_low, 1 + eps_high) A_t), the sequence objective J_i on each of its tokens,
    with s entering as sg(s) * pi_t / sg(pi_t) (as verl writes it): d J_t / d log pi_t = m s A_t, so the per-token
    objectives of one response sum to |y| times J_i in value and their gradients to |y| times J_i's
    (d s / d log pi_t = s / |y|): aggregation seq-mean-token-mean gives the paper's (1/G) sum_i J_i exactly.
    w_t = m s / r_t, r_t = pi_t / anchor_t, m = 0 where the sequence is clipped the way A pushes, else 1.
    """
    log_ratio = (x.log_prob - x.anchor_log_prob).mul_(x.mask_f)  # [B, T], unclamped, 0 on padding
    log_s = log_ratio.sum(-1, keepdim=True).div_(x.mask_f.sum(-1, keepdim=True).clamp_(min=1))  # [B, 1]
    s = log_s.clamp_(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp_()  # [B, 1]
    clipped = ((s > 1 + h.eps_high) & x.pushed_up) | ((s < 1 - h.eps_low) & x.pushed_down)  # [B, 1] or [B, T]
    objective = torch.where(clipped, s.clamp(1 - h.eps_low, 1 + h.eps_high), s) * x.advantages  # [B, 1] or [B, T]
    return objective, (~clipped) * s / x.ratio
