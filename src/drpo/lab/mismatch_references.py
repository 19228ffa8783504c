"""Published training-inference mismatch figures, as their sources state them.

Each entry is one number from one public report: the model, the two engines compared, the precision,
the statistic (as the source names it, and our key in drpo.mismatch.stats when it is the same
quantity), the value exactly as published, and where it was published. The report places a user's
numbers next to these; it never interpolates between them. Engines label their metrics differently
and some sign conventions are the source's own (noted), so read each figure with its note.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    model: str
    engines: str  # rollout engine vs trainer
    precision: str
    metric: str  # the source's name for the statistic
    stat: str | None  # our pair_stats key for the same quantity, None when we compute no equivalent
    published: str  # the value exactly as published
    value: float | None  # the same value as a number (a percentage as a fraction), None for a range
    note: str
    source: str
    url: str


_TRL_6789 = ("huggingface/trl issue #6789, comment by GuoCheng24 (2026-09-17)",
             "https://github.com/huggingface/trl/issues/6789")
_TRL_6789_NOTE = "3,916 completion tokens, temperature 1.0, top_p 1.0, trainer chunk of 8; sign as the source"
_TRL_7269 = ("huggingface/trl pull request #7269 (GuoCheng24, 2026-09-18)", "https://github.com/huggingface/trl/pull/7269")
_VIME_64 = ("vllm-project/vime issue #64 (CalvinXKY, 2026-05-28)", "https://github.com/vllm-project/vime/issues/64")
_VERL_7242 = ("verl-project/verl pull request #7242 (wuxibin89, 2026-08-03)",
              "https://github.com/verl-project/verl/pull/7242")
_FASTLLM_525 = ("ServiceNow/Fast-LLM pull request #525, comments by jlamypoirier (2026-06-02, 2026-06-03)",
                "https://github.com/ServiceNow/Fast-LLM/pull/525")
_FASTLLM_NOTE = "RMS over chosen tokens of log pi_trainer - log pi_vLLM, single forward on byte-identical realistic text"
_YAO = ("F. Yao, L. Liu et al., \"Your Efficient RL Framework Secretly Brings You Off-Policy RL Training\" "
        "(blog, 2025) and \"On the Rollout-Training Mismatch in Modern RL Systems\" (slides, 2025-11-10, slide 14)",
        "https://fengyao.notion.site/off-policy-rl")
_MILES_512 = ("radixark/miles pull request #512 (zianglih, 2026-01-24)", "https://github.com/radixark/miles/pull/512")
_MILES_2722 = ("radixark/miles issue #2722, comment by Suhail (2026-08-23)", "https://github.com/radixark/miles/issues/2722")
_XTUNER_2044 = ("InternLM/xtuner pull request #2044 (jayhenry, 2026-08-25)", "https://github.com/InternLM/xtuner/pull/2044")

REFERENCES: tuple[Reference, ...] = (
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "bf16 trainer", "mean of the log-prob difference",
              "logp_mean", "-0.0015", -0.0015, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "bf16 trainer", "sd of the log-prob difference",
              "logp_std", "0.0499", 0.0499, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "bf16 trainer", "p95 abs log-prob difference",
              "abs_logp_p95", "0.113", 0.113, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "bf16 trainer", "max abs log-prob difference",
              "abs_logp_max", "0.477", 0.477, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "bf16 trainer", "ratio outside [0.9, 1.1]",
              "ratio_outside_0.9_1.1", "7.5%", 0.075, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "fp32 trainer", "max abs log-prob difference",
              "abs_logp_max", "0.371", 0.371, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-0.5B-Instruct", "vLLM vs HF trainer", "fp32 trainer", "ratio outside [0.9, 1.1]",
              "ratio_outside_0.9_1.1", "3.7%", 0.037, _TRL_6789_NOTE, *_TRL_6789),
    Reference("Qwen2.5-1.5B-Instruct", "vLLM 0.28 vs HF trainer", "bf16 trainer", "ratio outside [0.9, 1.1]",
              "ratio_outside_0.9_1.1", "6.9%", 0.069,
              "control row: top_p 1.0, top_k 1024, temperature 1.0, full-vocabulary trainer log-probs", *_TRL_7269),
    Reference("Qwen2.5-1.5B-Instruct", "vLLM 0.28 vs HF trainer", "bf16 trainer", "ratio outside [0.9, 1.1]",
              "ratio_outside_0.9_1.1", "51.8%", 0.518,
              "top_p 0.8, top_k 1024: truncated sampling, the kept mass (0.895) enters the ratio", *_TRL_7269),
    Reference("Qwen3-4B", "vLLM (vime) vs Megatron", "not stated", "train_rollout_logprob_abs_diff",
              "abs_logp_mean", "~0.011", 0.011, "flat across 30 rollout steps", *_VIME_64),
    Reference("Qwen3-4B", "SGLang (slime) vs Megatron", "not stated", "train_rollout_logprob_abs_diff",
              "abs_logp_mean", "~0.011 -> ~0.036", None, "monotonic increase over 30 rollout steps", *_VIME_64),
    Reference("DeepSeek V4", "verl rollout vs VeOmni trainer", "not stated", "training/rollout_probs_diff_mean",
              "abs_p_mean", "0.014773058705031872", 0.014773058705031872, "one logged step", *_VERL_7242),
    Reference("DeepSeek V4", "verl rollout vs VeOmni trainer", "not stated", "training/rollout_probs_diff_max",
              "abs_p_max", "0.6111682653427124", 0.6111682653427124, "one logged step", *_VERL_7242),
    Reference("DeepSeek V4", "verl rollout vs VeOmni trainer", "not stated", "rollout_corr/k3_kl",
              "kl_k3", "0.005191931966692209", 0.005191931966692209, "one logged step", *_VERL_7242),
    Reference("Qwen2.5-0.5B", "vLLM vs Fast-LLM", "bf16, fp32 head both sides", "RMS delta (nats)",
              "logp_rms", "0.0306", 0.0306, _FASTLLM_NOTE, *_FASTLLM_525),
    Reference("Qwen2.5-0.5B", "vLLM vs Fast-LLM", "fp32 both sides (floor)", "RMS delta (nats)",
              "logp_rms", "0.0022", 0.0022, _FASTLLM_NOTE, *_FASTLLM_525),
    Reference("Qwen2.5-7B", "vLLM vs Fast-LLM", "bf16, fp32 head both sides", "RMS delta (nats)",
              "logp_rms", "0.0227", 0.0227, _FASTLLM_NOTE, *_FASTLLM_525),
    Reference("DAPO Qwen2.5-32B, DS-Qwen2.5-1.5B", "vLLM vs FSDP", "bf16", "max token-probability difference",
              "abs_p_max", "1.0", 1.0, "same weights, same rollout", *_YAO),
    Reference("Qwen3-30B-A3B (MoE)", "SGLang vs Megatron", "mxfp8 rollout and training", "train_rollout_logprob_abs_diff",
              "abs_logp_mean", "0.0255", 0.0255, "initial value, GB200, rollout routing replay on", *_MILES_512),
    Reference("DeepSeek-V4-Flash-0731 (MoE)", "SGLang vs Miles/Megatron", "not stated",
              "mean absolute logprob difference", "abs_logp_mean", "0.0052195", 0.0052195,
              "after aligning kernels and semantics, on a short saturated two-token answer (the source's caveat)",
              *_MILES_2722),
    Reference("Qwen3.5-35B-A3B (MoE)", "rollout vs trainer (xtuner)", "FP8", "k3_kl",
              "kl_k3", "8.691058e-3", 8.691058e-3, "step 2, before aligning FP8 weight quantization", *_XTUNER_2044),
    Reference("Qwen3.5-35B-A3B (MoE)", "rollout vs trainer (xtuner)", "FP8", "k3_kl",
              "kl_k3", "3.729346e-4", 3.729346e-4, "step 2, with BF16-aligned FP8 quantization", *_XTUNER_2044),
)


def sources() -> list[tuple[str, str]]:
    """(citation, URL) of every source, once each, in table order."""
    seen: dict[str, str] = {}
    for ref in REFERENCES:
        seen.setdefault(ref.source, ref.url)
    return list(seen.items())
