"""The run config: every section, the top-level keys, and the checks that span sections.

    config = RunConfig.model_validate({"loss": {"name": "drpo"}, "steps": 300})   # drpo.config.load_config
    config.recorded()                # what the run's config.yaml holds: every loss hyper-parameter written out
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import pydantic
import yaml

from drpo.config.sections import (
    TOPK_LOSS_LOGPROBS,
    AdaptiveDeltaConfig,
    AdvantageConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    Section,
    WarmupConfig,
    list_of,
)
from drpo.config.task import TaskConfig
from drpo.constants import TRACKERS


class RunConfig(Section):
    out: str = pydantic.Field("runs/default", description="run directory (config, metrics, checkpoints, plots)")
    steps: int = pydantic.Field(100, ge=0, description="RL steps (one rollout batch and its updates each)")
    seed: int = pydantic.Field(0, ge=0)
    resume: str | None = pydantic.Field(
        None, description="run directory to continue from its latest checkpoint; only steps and out may differ from "
        "its config (with schedule=cosine a new steps stretches the rest of the schedule)")
    updates_per_batch: int = pydantic.Field(
        4, ge=1, description="optimizer steps per rollout batch (mini-batches, all anchored on mu): staleness")
    recompute_old_log_prob: bool = pydantic.Field(
        True, description="recompute pi_old before the updates (needed by anchor=recompute; gives mismatch/*)")
    diagnose_pull: bool = pydantic.Field(
        False, description="log the gradient norms of the loss's policy-gradient part (w = 1) and pull part (w - 1; "
        "DRPO: -sign(A)(pi - mu)/delta) on the first update of each step (drpo.diagnostics; 2 extra backwards)")
    checkpoint_every: int = pydantic.Field(50, ge=1, description="checkpoint every N RL steps (and at the end)")
    max_bad_steps: int = pydantic.Field(3, ge=1, description="stop after this many non-finite steps in a row")
    report_to: list[Literal[TRACKERS]] = pydantic.Field(
        ["tensorboard"], description="where metrics go besides metrics.jsonl, as TRL spells it: tensorboard (OUT/tb), "
        "wandb (project $WANDB_PROJECT or drpo; WANDB_MODE=offline writes OUT/wandb), none; a list: [tensorboard,wandb]")
    dump_log_probs: bool = pydantic.Field(
        False, description="write OUT/log_probs.jsonl each step (mu, pi_old, pi, advantages) for `drpo mismatch`")
    loss: LossConfig = pydantic.Field(default_factory=LossConfig)
    model: ModelConfig = pydantic.Field(default_factory=ModelConfig)
    task: TaskConfig = pydantic.Field(default_factory=TaskConfig)
    rollout: RolloutConfig = pydantic.Field(default_factory=RolloutConfig)
    advantage: AdvantageConfig = pydantic.Field(default_factory=AdvantageConfig)
    optim: OptimConfig = pydantic.Field(default_factory=OptimConfig)
    warmup: WarmupConfig = pydantic.Field(default_factory=WarmupConfig)
    eval: EvalConfig = pydantic.Field(default_factory=EvalConfig)
    adaptive_delta: AdaptiveDeltaConfig = pydantic.Field(default_factory=AdaptiveDeltaConfig)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _tensorboard_flag(cls, data):
        # configs written before report_to existed say tensorboard: true/false
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            flag = data.pop("tensorboard")
            data.setdefault("report_to", ["tensorboard"] if flag else ["none"])
        return data

    @pydantic.field_validator("report_to", mode="before")
    @classmethod
    def _cli_list(cls, value):
        return list_of(value)

    @pydantic.field_validator("report_to")
    @classmethod
    def _none_alone(cls, value):
        if "none" in value and len(value) > 1:
            raise ValueError(f"report_to={value}: none cannot be combined with a tracker")
        if "wandb" in value and importlib.util.find_spec("wandb") is None:
            raise ValueError("report_to=wandb needs wandb: pip install 'drpo[wandb]' (or leave wandb out of report_to)")
        return list(dict.fromkeys(value))

    @pydantic.model_validator(mode="after")
    def _known_loss(self):
        # here, not in LossConfig: pydantic runs a model's after-validators only once all its keys validated, so a
        # bad key elsewhere is reported without importing torch (drpo.losses does); the first of the cross-checks
        self.loss.build()  # raises ValueError naming the loss, the bad key and the allowed ones
        return self

    @pydantic.model_validator(mode="after")
    def _chat_phrasing_needs_a_pretrained_model(self):
        if self.task.phrasing == "chat" and not self.model.pretrained:
            raise ValueError("task.phrasing=chat asks questions in words, which the built-in character-level model "
                             "cannot read: use a pretrained model (model=smollm2-135m, hf:DIR) or phrasing=compact")
        if self.task.name == "chain" and not self.model.pretrained:
            raise ValueError("task=chain works its answer out in words, which the built-in character-level model "
                             "cannot write: use a pretrained model (model=smollm2-135m, hf:DIR)")
        if self.task.name == "chain" and self.task.phrasing == "compact":
            raise ValueError("task=chain has no compact phrasing: leave task.phrasing at auto (or chat)")
        return self

    @pydantic.model_validator(mode="after")
    def _batch_splits_into_updates(self):
        rows = self.rollout.prompts * self.rollout.group_size
        if rows < self.updates_per_batch:
            raise ValueError(f"updates_per_batch={self.updates_per_batch} mini-batches cannot be cut from "
                             f"{rows} responses per step (rollout.prompts x rollout.group_size = "
                             f"{self.rollout.prompts} x {self.rollout.group_size}): lower updates_per_batch or "
                             "raise rollout.prompts")
        return self

    @pydantic.model_validator(mode="after")
    def _llamacpp_runs_llama_models(self):
        for key, engine in (("rollout.engine", self.rollout.engine), ("eval.engine", self.eval.engine)):
            if engine == "llamacpp" and not self.model.pretrained and self.model.arch != "llama":
                raise ValueError(f"{key}=llamacpp runs llama-architecture models; the built-in transformer's is "
                                 "model.arch=llama (its default arch=gpt has a GELU MLP that llama.cpp cannot run)")
        return self

    @pydantic.model_validator(mode="after")
    def _moe_aux_needs_moe(self):
        if self.optim.changed(("moe_aux_coef",)) and not self.model.moe:
            raise ValueError("optim.moe_aux_coef weighs the load-balancing loss of the built-in MoE model; set "
                             "model.moe=true (a dense or hf: model has no such term here)")
        return self

    @pydantic.model_validator(mode="after")
    def _adaptive_delta_needs_a_boundary_and_pi_old(self):
        # lazy: drpo.adaptive imports torch, which a config error need not wait for
        from drpo.adaptive import adaptive_losses, max_boundary

        if not self.adaptive_delta.enabled:
            return self
        loss = self.loss.build()
        if not loss.spec.boundary:  # the losses declare their boundary (drpo.losses.registry)
            raise ValueError(f"adaptive_delta sets the boundary of {', '.join(adaptive_losses())}; "
                             f"loss={self.loss.name} has none: choose one of them or set adaptive_delta.enabled=false")
        if (limit := max_boundary(loss.spec)) is not None and self.adaptive_delta.max_delta > limit:
            raise ValueError(f"adaptive_delta.max_delta must be <= {limit:g} for {loss.name} (its "
                             f"{' and '.join(loss.spec.boundary)} accept at most {limit:g})")
        if not self.recompute_old_log_prob and loss.hyper.anchor != "recompute":
            raise ValueError("adaptive_delta measures |pi_old - mu|: set recompute_old_log_prob=true")
        return self
    @property
    def top_k_logprobs(self) -> int:
        """How many of mu's top-k log-probs the rollout records per token."""
        if self.rollout.top_k_logprobs or not self.loss.build().spec.needs_topk:
            return self.rollout.top_k_logprobs
        return TOPK_LOSS_LOGPROBS

    def recorded(self) -> dict:
        """What a run's config.yaml holds: the dumped config with every loss hyper-parameter written out."""
        return with_resolved_loss(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.recorded(), sort_keys=False)


def with_resolved_loss(tree: dict) -> dict:
    """``tree`` (a dumped RunConfig) with every hyper-parameter of its loss written out, defaults included: a
    run records what it ran with, so a later change of a default cannot re-mean it. A run saved before this
    (only the keys set by hand) resolves against today's defaults; a loss section that no longer validates
    raises ValueError."""
    section = tree.get("loss", {})
    resolved = LossConfig(**section).build().hyper.model_dump(mode="json")
    return {**tree, "loss": {**section, **resolved}}
