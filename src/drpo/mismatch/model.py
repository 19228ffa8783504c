"""The model mode: how far each rollout engine's mu is from the fp32 trainer, on the model's own rollouts.

    drpo mismatch model=tiny --rollouts bf16 fp16 fp8 int8
    drpo mismatch model=tiny model.arch=llama --rollouts native:bf16 native:fp8 llamacpp:f16 llamacpp:q8_0

Each rollout is ``ENGINE:MODE`` or a bare ``MODE`` (its first engine in drpo.behavior.modes.ROLLOUT_MODES:
bf16 -> native, q8_0 -> llamacpp). For each, the behavior policy the run config would build with
``rollout.engine=ENGINE rollout.precision=MODE`` (drpo.backends.build_behavior: the native copy of the policy
in that precision, or llama.cpp serving the same weights) samples responses to held-out prompts from the same
seed, recording mu; the engine is freed, and the fp32 policy recomputes pi_old of the same tokens (no gradients).
The comparison is the engine mismatch of the file mode, and the numbers go through the same statistics.
vLLM is not run here (it needs a GPU and a Hugging Face model): dump its log-probs from a run instead.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drpo.behavior import ENGINES, ROLLOUT_MODES, SamplingParams, modes_of
from drpo.config import validate
from drpo.config.load import apply_override

if TYPE_CHECKING:
    from drpo.mismatch.format import TokenLogProbs

MODEL_ENGINES = tuple(engine for engine in ENGINES if engine != "vllm")  # what the model mode runs
DEFAULT_ROLLOUTS = ("native:bf16", "native:fp16", "native:fp8", "native:int8")


@dataclass(frozen=True)
class Rollout:
    """One rollout of the model mode: an engine and one of its modes."""

    engine: str
    mode: str

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.mode}"

    @property
    def rounds(self) -> str:
        return ROLLOUT_MODES[self.mode].rounds


def valid_rollouts() -> list[str]:
    """Every ``engine:mode`` the model mode runs."""
    return [f"{engine}:{mode}" for engine in MODEL_ENGINES for mode in modes_of(engine)]


def rollout_choices() -> str:
    """The valid rollouts in short: 'native:fp32|bf16|..., llamacpp:f32|...'."""
    return ", ".join(f"{engine}:{'|'.join(modes_of(engine))}" for engine in MODEL_ENGINES)


def parse_rollout(text: str) -> Rollout:
    """``ENGINE:MODE`` or ``MODE`` (its first engine); ValueError naming the valid values, or why vLLM is not run.

    >>> parse_rollout("q8_0"), parse_rollout("native:fp8").label
    (Rollout(engine='llamacpp', mode='q8_0'), 'native:fp8')
    """
    if not isinstance(text, str):
        return text  # already a Rollout
    engine, sep, mode = text.strip().rpartition(":")
    if not sep:
        engine = ROLLOUT_MODES[mode].engines[0] if mode in ROLLOUT_MODES else ""
    if engine == "vllm":
        raise ValueError(f"rollout {text!r}: the model mode does not run vLLM (it needs a GPU and a Hugging Face "
                         "model); dump a vLLM run's log-probs (drpo train rollout.engine=vllm dump_log_probs=true) "
                         "and pass the file instead")
    if engine not in MODEL_ENGINES or mode not in modes_of(engine):
        raise ValueError(f"unknown rollout {text!r}; valid: {', '.join(valid_rollouts())} (a bare mode means its "
                         "first engine: bf16 is native:bf16, q8_0 is llamacpp:q8_0)")
    return Rollout(engine, mode)


def parse_rollouts(items) -> list[Rollout]:
    """:func:`parse_rollout` of each item; ValueError when two name the same rollout."""
    rollouts = [parse_rollout(item) for item in items]
    if not rollouts:
        raise ValueError(f"name at least one rollout; valid: {', '.join(valid_rollouts())}")
    seen = [r.label for r in rollouts]
    twice = sorted({label for label in seen if seen.count(label) > 1})
    if twice:
        raise ValueError(f"rollout(s) {', '.join(twice)} given twice")
    return rollouts


def rollout_config(config, rollout: Rollout):
    """``config`` with ``rollout.engine`` and ``rollout.precision`` set to the rollout's, validated again (an
    engine's own settings, such as rollout.llamacpp_threads, stay with that engine)."""
    tree = config.model_dump(exclude_unset=True)
    section = tree.setdefault("rollout", {})
    section.pop("backend", None)
    for key, engine in (("llamacpp_threads", "llamacpp"), ("vllm_gpu_memory", "vllm")):
        if rollout.engine != engine:
            section.pop(key, None)
    apply_override(tree, "rollout.engine", rollout.engine)
    apply_override(tree, "rollout.precision", rollout.mode)
    return validate(tree)


def measure_rollouts(config, rollouts=DEFAULT_ROLLOUTS, prompts: int = 32, samples: int = 4,
                     rows_per_forward: int = 16, console=None) -> list[TokenLogProbs]:
    """One TokenLogProbs per rollout (labelled ``engine:mode``): mu from that engine's rollouts, pi_old from the
    fp32 policy.

    ``config``: a RunConfig (model, task, seed, rollout.temperature / top_p / ignore_eos / stop); ``rollouts``:
    ``ENGINE:MODE`` or ``MODE`` strings (or :class:`Rollout`); ``prompts`` held-out prompts with ``samples``
    responses each, from the same seed for every rollout; ``rows_per_forward`` bounds the memory of the fp32
    recomputation (rows x tokens x vocabulary logits). One engine lives at a time.
    """
    # lazy: imported here, not at the top: `drpo mismatch --help` reads DEFAULT_ROLLOUTS and rollout_choices() from
    # this module without torch or numpy
    import torch

    from drpo.backends import build_behavior, build_policy
    from drpo.mismatch.format import from_records, records_from_batch

    with torch.no_grad():
        rollouts = parse_rollouts(rollouts)
        if prompts < 1 or samples < 1 or rows_per_forward < 1:
            raise ValueError(f"need prompts, samples and rows per forward >= 1; got {prompts}, {samples}, "
                             f"{rows_per_forward}")
        configs = [rollout_config(config, rollout) for rollout in rollouts]  # a bad combination stops before any work
        policy = build_policy(config, console=console)
        policy.model.eval()
        if any(rollout.engine == "llamacpp" for rollout in rollouts):
            _check_llamacpp(policy)
        task = policy.task
        examples = list(task.eval[:prompts])
        encoded = [policy.encode_prompt(example) for example in examples]
        device = next(policy.model.parameters()).device
        cfg = config.rollout
        sources = []
        for rollout, rollout_cfg in zip(rollouts, configs, strict=True):
            behavior = build_behavior(rollout_cfg, policy)
            generator = torch.Generator(device).manual_seed(config.seed)  # every rollout samples from one seed
            sampling = SamplingParams(eos_id=policy.tokenizer.eos_id, pad_id=policy.tokenizer.pad_id,
                                      temperature=cfg.temperature, top_p=cfg.top_p, ignore_eos=cfg.ignore_eos,
                                      stop=policy.stopper(), generator=generator)
            try:
                batch = behavior.generate(encoded, group_size=samples, max_new_tokens=task.max_response_len,
                                          sampling=sampling)
                engine = describe_engine(behavior.describe())
            finally:
                _free(behavior)  # one engine (a low-precision copy, a llama.cpp model) at a time
                del behavior
                gc.collect()
            old_log_prob = torch.cat([policy.log_probs(batch.select(slice(start, start + rows_per_forward)),
                                                       cfg.temperature).log_prob
                                      for start in range(0, len(batch), rows_per_forward)])  # [N, T] fp32 pi_old
            records = records_from_batch(batch.rollout_log_prob, batch.response_mask, old_log_prob=old_log_prob,
                                         engine=engine)
            sources.append(from_records(records, label=rollout.label,
                                        where=f"{config.model.name} rollouts by {rollout.label}"))
            if console is not None:
                console.print(f"  {rollout.label}: {len(records)} responses, {sources[-1].num_tokens} tokens")
        return sources


def _check_llamacpp(policy) -> None:
    """Before any rollout: llama.cpp is installed and serves this model (ValueError saying why not)."""
    try:
        # lazy: the engine needs llama-cpp-python, an optional dependency (drpo[llamacpp])
        from drpo.behavior.llamacpp import import_llama_cpp, llama_source
    except ImportError as error:
        raise ValueError(f"llamacpp rollouts need the llama.cpp engine: {error}") from None
    llama_source(policy.model)  # ValueError naming the supported models
    try:
        import_llama_cpp()
    except ImportError as error:
        raise ValueError(str(error)) from None


def _free(behavior) -> None:
    close = getattr(behavior, "close", None)
    if callable(close):
        close()


def describe_engine(described: dict) -> str:
    """A behavior policy's ``describe()`` as the engine of its log-prob records: 'drpo native bf16' (lag if any)."""
    lag = f", lag {described['lag']}" if described.get("lag") else ""
    return f"drpo {described['engine']} {described['mode']}{lag}"
