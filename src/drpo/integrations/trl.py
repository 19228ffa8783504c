"""TRL adapter: a GRPOTrainer whose policy loss is any loss of drpo.losses.

    from drpo.integrations.trl import DRPOConfig, DRPOTrainer
    args = DRPOConfig(output_dir="out", drpo_loss="drpo", loss_type="dr_grpo")  # the recommended delta
    DRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...).train()

What changes against GRPOTrainer: only the per-token policy loss. Sampling, rewards, advantages,
the KL term (``beta``), the masks (``top_entropy_quantile``, ``off_policy_mask_threshold``) and the
loss normalisation stay TRL's (its own methods, or a mirror of its lines tested against them: see "Where it
plugs into TRL" below), and ``loss_type`` picks that normalisation alone:
``grpo`` (per-sequence token mean), ``bnpo`` (local token mean), ``dr_grpo`` (token sum /
max_completion_length), ``dapo`` (global token mean over the accumulated batch; TRL's default).

Anchors: mu = TRL's sampling log-probs (``sampling_per_token_logps``, from vLLM or a rollout_func)
when present, else its old log-probs pi_old (``old_per_token_logps``, computed when generation and
optimisation are misaligned, or with vLLM and ``vllm_importance_sampling_correction``), else the
current log-probs detached (on-policy: r = 1). pi_old, for ``anchor="recompute"``, is the old
log-probs, else the detached current ones. Tokens whose sampling log-prob vLLM could not provide
(NaN) fall back to pi_old (r = 1 when there is none); the metric ``mu/nan_tokens`` counts them.

TRL's vLLM importance-sampling weight (pi_old / mu, shaped by ``vllm_importance_sampling_mode`` and
its clip bounds) depends on the anchor:

- ``anchor="rollout"`` (default): not applied. Our losses measure r = pi / mu themselves, so the weight
  would count the mismatch twice; a non-default mode or clip bound would be ignored and is rejected.
- ``anchor="recompute"``: r = pi / pi_old, so the sampler's mismatch pi_old / mu is applied exactly as
  GRPOTrainer applies it (the role of verl's rollout IS weights in its decoupled mode). Hence with
  vLLM ``vllm_importance_sampling_correction`` must stay True, and a rollout that reports mu without
  that weight (a rollout_func without vLLM) is refused.

Mapped to TRL's own options, not run by DRPOTrainer (each loss says so in its spec, ``trl=ConfigMap(refused=...)``
at its ``register_loss``, drpo.losses.registry): ``decoupled_ppo`` and its presets (ppo_tis, ppo_mis,
ppo_seq_tis, ppo_seq_mis, ppo_geo_mis, minirl), whose pi_old / mu weight is TRL's
``vllm_importance_sampling_mode``, and ``gspo`` (``importance_sampling_level="sequence"``). Every other loss
registered, a later one included, runs.

Not supported (rejected by DRPOConfig): the Top-K DPPO variants (TRL keeps only the sampled token's
log-prob from vLLM and does not hand the loss its logits), ``importance_sampling_level="sequence"``
(our losses are per token), TRL's entropy bonus (``entropy_coef``, ``use_adaptive_entropy``), and
TRL's clipping settings ``epsilon``, ``epsilon_high``, ``delta`` (the trust region is the loss's:
``drpo_loss_kwargs``).

Where it plugs into TRL: ``DRPOTrainer._compute_loss`` overrides ``GRPOTrainer._compute_loss`` and mirrors it
(TRL ``TRL_MIRRORED``) but for the per-token policy loss. TRL 1.16 has no smaller seam: the per-token loss is
inline code in that private method, between the ratio ``coef_1`` and the masks; no method or hook computes it
alone, and GRPOTrainer.compute_loss ignores Trainer's ``compute_loss_func``. Running TRL's method on rigged
inputs instead (advantages, epsilon or old log-probs chosen so that its PPO term equals ours, or an intercepted
``torch.min``) would depend on the same private lines, silently, and would feed the rigged tensors to TRL's KL
bias correction and off-policy mask, which read them too. So the mirror is small and checked:

- TRL's own methods: the forward ``_get_per_token_logps_and_entropies``, handed every model input its signature
  names (images included, ``forward_input_keys``), and the masks ``get_off_policy_mask`` and ``get_high_entropy_mask``;
- TRL's lines, copied: the k3 KL to the reference model (``beta``, ``use_bias_correction_kl``), the ``loss_type``
  normalisations, the MoE aux loss, the ``kl`` / ``entropy`` / ``aux_loss`` metrics;
- tests/test_integration_trl.py runs TRL's own ``GRPOTrainer._compute_loss`` beside ours on the same tensors
  (``drpo_loss="ppo_clip"`` is TRL's GRPO loss) for each ``loss_type``, ``beta``, both masks, tool masks, the vLLM
  weight and the aux loss, and fails when that method's source (``trl_drift``) or the signatures the adapter
  relies on change; DRPOTrainer warns at start-up when the installed TRL's method is not the mirrored one.

No silent defaults: TRL's PPO widths never reach our loss (set, they are refused above); DRPOConfig logs
the bound loss with where each hyper-parameter came from (``drpo_loss_kwargs`` or drpo's own default,
e.g. the recommended delta ``drpo.losses.DRPO_DELTA``) and warns when the trust region cannot bind
(drpo.losses.checks).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import trl
from trl import GRPOConfig, GRPOTrainer

from drpo.losses import LOSSES, METRIC_KEYS, PRESETS, LossOutput, get_loss, resolved, warn_if_cannot_bind
from drpo.mismatch.dump import CallDump

logger = logging.getLogger(__name__)

NORMALISATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
CLIPPING = ("epsilon", "epsilon_high", "delta")  # TRL's PPO trust region; ours is drpo_loss's
VLLM_IS_SHAPE = ("vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max",
                 "vllm_importance_sampling_clip_min")

# The TRL release whose GRPOTrainer._compute_loss DRPOTrainer._compute_loss mirrors, and the first 16 hex digits of
# the sha256 of that method's source (inspect.getsource). Port a TRL change into _compute_loss, then update both.
TRL_MIRRORED = "1.16.0"
TRL_COMPUTE_LOSS_SHA256 = "80295546bbdbf6f7"
# The arguments of GRPOTrainer._get_per_token_logps_and_entropies that are not model inputs taken from the batch
FORWARD_ARGS = ("self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
                "compute_aux_loss")


def trl_drift() -> str | None:
    """None when the installed GRPOTrainer._compute_loss is the one DRPOTrainer mirrors, else what to check."""
    try:
        source = inspect.getsource(GRPOTrainer._compute_loss)
    except (OSError, TypeError):  # no source installed: nothing to compare
        return None
    if hashlib.sha256(source.encode()).hexdigest()[:16] == TRL_COMPUTE_LOSS_SHA256:
        return None
    return (f"GRPOTrainer._compute_loss of the installed TRL {trl.__version__} differs from TRL {TRL_MIRRORED}'s, "
            "which DRPOTrainer._compute_loss mirrors but for the per-token policy loss (KL, masks, normalisation): "
            f"compare the two, port the change, then update TRL_MIRRORED and TRL_COMPUTE_LOSS_SHA256 in "
            f"{__name__}, or install trl=={TRL_MIRRORED}")


@functools.cache
def forward_input_keys() -> tuple[str, ...]:
    """The batch keys GRPOTrainer._compute_loss hands its forward (images and the like): the parameters of
    _get_per_token_logps_and_entropies past its own arguments, so a model input TRL adds is passed too."""
    params = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    return tuple(name for name in params if name not in FORWARD_ARGS)


def _changed(config: GRPOConfig, names: tuple[str, ...]) -> list[str]:
    """'name=value' for each of ``names`` that differs from GRPOConfig's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    return [f"{name}={getattr(config, name)!r}" for name in names if getattr(config, name) != defaults[name]]


def clipping_equivalents() -> str:
    """Which drpo_loss and drpo_loss_kwargs are TRL's own clipping fields (e.g. TRL's epsilon / epsilon_high / delta
    are drpo_loss='ppo_clip' with its eps_low / eps_high / dual_clip): the losses whose specs map their
    hyper-parameters to TRL's config fields (``trl=ConfigMap({...})``)."""
    return "; ".join(
        f"TRL's {' / '.join(spec.trl.fields.values())} are drpo_loss='{spec.name}' with drpo_loss_kwargs="
        f"{{{', '.join(f'{key!r}: ...' for key in spec.trl.fields)}}}"
        for spec in LOSSES.values() if spec.trl.fields and spec.trl.refused is None)


@dataclass
class DRPOConfig(GRPOConfig):
    """GRPOConfig plus our loss: ``drpo_loss`` (a drpo.losses name) and its ``drpo_loss_kwargs``."""

    drpo_loss: str = field(
        default="drpo",
        metadata={"help": "policy loss from drpo.losses: drpo, spo, dppo_binary_tv, dppo_binary_kl, ppo_clip "
                  "(grpo), cispo, pg_is, or a preset such as drpo_reference"},
    )
    drpo_loss_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "hyper-parameters of drpo_loss, a dict or a JSON string, e.g. '{\"delta\": 0.15}' (unset: "
                  "the loss's defaults, DRPO at the recommended delta drpo.losses.DRPO_DELTA)"},
    )
    drpo_dump_log_probs: str | None = field(
        default=None,
        metadata={"help": "append each loss call's tokens (mu, pi_old, pi, advantages) to this .jsonl or .parquet "
                  "file for `drpo mismatch`; one file per process (FILE.rank<N>) when distributed"},
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.drpo_loss_kwargs, str):  # from the command line
            self.drpo_loss_kwargs = json.loads(self.drpo_loss_kwargs)
        self.drpo_loss_kwargs = dict(self.drpo_loss_kwargs or {})
        loss = get_loss(self.drpo_loss, **self.drpo_loss_kwargs)  # unknown names and bad values fail here
        sources = {**dict.fromkeys(PRESETS.get(self.drpo_loss, ("", {}))[1], f"the preset {self.drpo_loss}"),
                   **dict.fromkeys(self.drpo_loss_kwargs, "drpo_loss_kwargs")}
        logger.info("drpo: DRPOTrainer runs %s", resolved(loss, sources))
        warn_if_cannot_bind(loss)
        if loss.spec.trl.refused is not None:  # TRL's own version of it (the loss's spec)
            raise ValueError(f"drpo_loss='{self.drpo_loss}': {loss.spec.trl.refused}")
        if loss.spec.needs_topk:
            raise ValueError(f"drpo_loss='{self.drpo_loss}' needs the rollout's top-k log-probs and the current "
                             "logits, which TRL does not provide; use dppo_binary_tv or dppo_binary_kl")
        if self.loss_type not in NORMALISATIONS:
            raise ValueError(f"with DRPOTrainer, loss_type picks only TRL's loss normalisation; got "
                             f"'{self.loss_type}', expected one of {', '.join(NORMALISATIONS)} (for TRL's own "
                             "cispo/sapo/vespo/luspo objectives use GRPOTrainer)")
        if self.importance_sampling_level != "token":
            raise ValueError("DRPOTrainer computes per-token losses; set importance_sampling_level='token'")
        if self.entropy_coef != 0.0 or self.use_adaptive_entropy:
            raise ValueError("DRPOTrainer does not support TRL's entropy bonus; set entropy_coef=0.0 and "
                             "use_adaptive_entropy=False")
        if changed := _changed(self, CLIPPING):
            raise ValueError(
                f"DRPOTrainer does not use TRL's clipping ({', '.join(changed)}): the trust region is drpo_loss's, "
                f"set in drpo_loss_kwargs ('{self.drpo_loss}' takes {', '.join(type(loss.hyper).model_fields)}). "
                f"{clipping_equivalents()}")
        anchor = getattr(loss.hyper, "anchor", "rollout")
        if self.use_vllm and anchor == "rollout" and (changed := _changed(self, VLLM_IS_SHAPE)):
            raise ValueError(
                f"with anchor='rollout' DRPOTrainer does not apply TRL's vLLM importance-sampling weight (our "
                f"losses measure r = pi / mu already), so {', '.join(changed)} would be ignored. Bound the ratio "
                "in drpo_loss_kwargs (e.g. 'trunc' for pg_is and dppo_*), or add 'anchor': 'recompute' to "
                "drpo_loss_kwargs to apply TRL's pi_old / mu weight with these settings")
        if self.use_vllm and anchor == "recompute" and not self.vllm_importance_sampling_correction:
            raise ValueError(
                "anchor='recompute' measures r = pi / pi_old, so vLLM's mismatch pi_old / mu has to come from TRL's "
                "importance-sampling weight: keep vllm_importance_sampling_correction=True (its mode and clip "
                "bounds apply), or use anchor='rollout'")


class DRPOTrainer(GRPOTrainer):
    """GRPOTrainer with the policy loss of ``args.drpo_loss`` (see the module docstring)."""

    def __init__(self, *args_, args: DRPOConfig | None = None, **kwargs):
        if not isinstance(args, DRPOConfig):
            raise TypeError(f"DRPOTrainer needs args=DRPOConfig(...), got {type(args).__name__}")
        if drift := trl_drift():
            warnings.warn(drift, stacklevel=2)
        super().__init__(*args_, args=args, **kwargs)
        self.drpo_loss = get_loss(args.drpo_loss, **args.drpo_loss_kwargs)
        self.log_prob_dump = CallDump(args.drpo_dump_log_probs) if args.drpo_dump_log_probs else None

    def drpo_per_token(self, per_token_logps: torch.Tensor, inputs: dict[str, Any],
                       mask: torch.Tensor) -> LossOutput:
        """Our loss on TRL's tensors: the anchors chosen as the module docstring says. All [B, T]."""
        dtype = torch.promote_types(per_token_logps.dtype, torch.float32)
        log_prob = per_token_logps.to(dtype)
        old = inputs.get("old_per_token_logps")
        old = log_prob.detach() if old is None else old.to(dtype)  # pi_old
        mu = inputs.get("sampling_per_token_logps")
        mu = old if mu is None else torch.where(torch.isnan(mu), old, mu.to(dtype))  # behavior policy
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        advantages = advantages.to(dtype).expand_as(log_prob)
        if self.log_prob_dump is not None:  # the tokens as the loss sees them, for `drpo mismatch`
            source = next((key for key in ("sampling_per_token_logps", "old_per_token_logps")
                           if inputs.get(key) is not None), "the current log-probs (on-policy)")
            self.log_prob_dump.write(rollout_log_prob=mu, old_log_prob=old, log_prob=log_prob, mask=mask,
                                     advantages=advantages, step=self.state.global_step, engine=f"trl: mu = {source}")
        return self.drpo_loss(log_prob=log_prob, rollout_log_prob=mu, old_log_prob=old,
                              advantages=advantages, response_mask=mask)

    def _compute_loss(self, model, inputs):
        """GRPOTrainer._compute_loss of TRL 1.16 with our per-token policy loss: the module docstring says why the
        override is this method and what is mirrored; each block below is TRL's, in TRL's order."""
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]  # [B, T]
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], dim=1), torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1), compute_entropy=True, compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in forward_input_keys()},
        )  # [B, T] each

        out = self.drpo_per_token(per_token_logps, inputs, mask)  # ours: the per-token policy loss
        per_token_loss = out.per_token  # [B, T]

        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        if self.off_policy_mask_threshold is not None:  # TRL's off-policy sequence mask, on mu when it has one
            advantages = inputs["advantages"]
            per_token_loss = per_token_loss * self.get_off_policy_mask(
                advantages=advantages.unsqueeze(1) if advantages.dim() == 1 else advantages,
                per_token_logps=per_token_logps, sampling_per_token_logps=inputs.get("sampling_per_token_logps", old),
                mask=mask, off_policy_threshold=self.off_policy_mask_threshold)
        if self.top_entropy_quantile < 1.0:  # TRL's high-entropy token mask
            per_token_loss = per_token_loss * self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
        if getattr(self.drpo_loss.hyper, "anchor", "rollout") == "recompute" and "sampling_per_token_logps" in inputs:
            # r = pi / pi_old, so the sampler's own mismatch pi_old / mu is TRL's IS weight, applied as
            # GRPOTrainer applies it (verl's decoupled mode does the same with its rollout IS weights)
            if "importance_sampling_ratio" not in inputs:
                raise ValueError(
                    "anchor='recompute' with a rollout that reports mu (sampling log-probs) needs TRL's pi_old / mu "
                    "importance-sampling weight, which TRL computes only with use_vllm=True and "
                    "vllm_importance_sampling_correction=True; use anchor='rollout' with this rollout")
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]  # [B, T] or [B, 1]
        if self.beta != 0.0:  # TRL's k3 KL to the reference model, IS-corrected to pi_old as TRL does
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1  # [B, T]
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old)
            per_token_loss = per_token_loss + self.beta * per_token_kl

        # TRL's loss_type normalisation; only dapo's is not scaled by the accumulation steps
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        masked = per_token_loss * mask  # [B, T]
        if self.loss_type == "grpo":
            loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        elif self.loss_type == "bnpo":
            loss = masked.sum() / mask.sum().clamp(min=1.0) / accumulation
        elif self.loss_type == "dr_grpo":
            loss = masked.sum() / (masked.size(0) * self.max_completion_length) / accumulation
        else:  # dapo: num_items_in_batch spans the generation batch, rescaled to one accumulation window
            normaliser = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normaliser = normaliser * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            loss = masked.sum() / normaliser
        if self.aux_loss_enabled:  # MoE router loss, scaled for accumulation as TRL does
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(self._global_mean(per_token_kl, mask))
        self._metrics[mode]["entropy"].append(self._global_mean(entropies, mask))
        sampling = inputs.get("sampling_per_token_logps")
        nan_mu = torch.zeros((), device=mask.device) if sampling is None else (sampling.isnan() & (mask != 0)).sum()
        # valid tokens whose NaN sampling log-prob fell back to pi_old, summed over processes (each one joins)
        self._metrics[mode]["mu/nan_tokens"].append(self.accelerator.reduce(nan_mu.float(), reduction="sum").item())
        self._log_loss_metrics(out.metrics, mask.sum().item(), mode)
        return loss

    def _global_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().to(x.dtype)]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_loss_metrics(self, metrics: dict[str, float], tokens: float, mode: str) -> None:
        """Our metrics (loss/*, ratio/*, shift/*) into TRL's: means weighted by each process's valid tokens, max /
        min keys the extreme over processes.

        Every process gathers the same keys, NaN for those it has no value of: a micro-batch without a valid token
        has no metrics, and a process that skipped the gather would leave the others waiting in it for ever.
        """
        local = torch.tensor([tokens, *(metrics.get(key, math.nan) for key in METRIC_KEYS)],
                             dtype=torch.float32, device=self.accelerator.device)  # [1 + M]
        gathered = self.accelerator.gather(local.unsqueeze(0))  # [P, 1 + M]
        counts = gathered[:, 0]  # [P]
        for i, key in enumerate(METRIC_KEYS):
            column = gathered[:, i + 1]
            present = ~column.isnan()
            if not present.any():
                continue
            values, weights = column[present], counts[present]
            if key.endswith("max"):
                value = values.max()
            elif key.endswith("min"):
                value = values.min()
            else:
                value = (values * weights).sum() / weights.sum()
            self._metrics[mode][key].append(value.item())
