"""Named off-policy conditions of the stress test: each is a list of trainer overrides, i.e. a real
mechanism of drpo.trainer / drpo.behavior (the rollout engine's numerics, its lag, updates per batch), never noise
added to the numbers.

A plain dict, meant to be edited: add a preset, tune one (e.g. a larger lag), and `drpo compare
--conditions NAME ...` picks it up. Every preset sets the three off-policy knobs (rollout precision,
updates per batch, lag) itself, the ones it does not vary at their on-policy values: `drpo train`'s own
default is off-policy (bf16 rollouts, 4 updates per batch), and a condition must inject one mechanism,
not that one plus its own. :data:`SWEEP_OVERRIDES` apply to every run of a sweep after the condition's;
user overrides on the command line (`steps=60`) after those, and the method's `loss=...` last.
"""

from __future__ import annotations

ON_POLICY = {"rollout.precision": "fp32", "updates_per_batch": "1", "rollout.lag": "0"}

# The evaluation of a sweep: 1200 held-out prompts (the arith/sort eval split, disjoint from the training split
# that the warm-up probe is drawn from), greedy, so that one evaluation's standard error sqrt(p(1-p)/n) is at
# most 0.5/sqrt(1200) = 0.0144; the sampled avg@k is not used by the report and would cost 4x the greedy pass.
SWEEP_OVERRIDES = ["task.n_eval=1200", "eval.prompts=1200", "eval.samples=0"]


def departing(*overrides: str) -> list[str]:
    """``overrides`` plus the on-policy value of every knob of :data:`ON_POLICY` they leave unset."""
    given = {item.partition("=")[0] for item in overrides}
    return [*overrides, *(f"{key}={value}" for key, value in ON_POLICY.items() if key not in given)]


CONDITIONS: dict[str, dict] = {
    "fp32": {"about": "baseline: fp32 rollouts, one update per batch, no lag (on-policy up to float noise)",
             "overrides": departing()},
    "bf16": {"about": "training-inference mismatch: the behavior policy runs in bfloat16",
             "overrides": departing("rollout.precision=bf16")},
    "fp8": {"about": "training-inference mismatch as fp8 serving runs it: a bf16 behavior policy whose Linear "
                     "layers round weights and activations through float8_e4m3 (embedding and head bf16)",
            "overrides": departing("rollout.precision=fp8")},
    "fp8_all": {"about": "harsher fp8 (the first published sweep's `fp8`): fp32 behavior policy with every Linear, "
                         "the tied embedding and output head included, rounded through float8_e4m3",
                "overrides": departing("rollout.precision=fp8_all")},
    "int8": {"about": "training-inference mismatch: a bf16 behavior policy with W8A8 int8 Linear layers (head bf16)",
             "overrides": departing("rollout.precision=int8")},
    "stale": {"about": "staleness: 4 optimizer steps per rollout batch, rollouts from weights 2 steps old",
              "overrides": departing("updates_per_batch=4", "rollout.lag=2")},
    "stale_strong": {"about": "strong staleness: 8 optimizer steps per rollout batch, rollouts 4 steps old",
                     "overrides": departing("updates_per_batch=8", "rollout.lag=4")},
    "fp8_stale": {"about": "both sources at once, as in LLM RL at scale: fp8 (W8A8) rollouts and 4 optimizer steps "
                           "per rollout batch, all anchored on mu",
                  "overrides": departing("rollout.precision=fp8", "updates_per_batch=4")},
    "moe_bf16": {"about": "mixture-of-experts model with bf16 rollouts (low precision can flip routing)",
                 "overrides": departing("model.moe=true", "rollout.precision=bf16")},
    "scale": {"about": "model scale: the medium transformer (~10.6M parameters), fp32 rollouts",
              "overrides": departing("model=medium")},
    # A real inference engine's mismatch (drpo/behavior/llamacpp.py): llama.cpp's own kernels and quantized weights
    # and activations, not a rounded copy of the trainer. Opt-in (not in the default list): they need the
    # [llamacpp] extra and a llama-architecture model (smollm2-135m, or the built-in model.arch=llama).
    "llamacpp_q8": {"about": "a real engine's mismatch: rollouts from llama.cpp with Q8_0 weights (activations "
                             "quantized to Q8_0), one update per batch, no lag",
                    "overrides": departing("rollout.engine=llamacpp", "rollout.precision=q8_0"), "opt_in": True},
    "llamacpp_q4": {"about": "a real engine's harsher mismatch: llama.cpp with Q4_0 weights (activations Q8_0)",
                    "overrides": departing("rollout.engine=llamacpp", "rollout.precision=q4_0"), "opt_in": True},
    "llamacpp_q4_stale": {"about": "both sources with a real engine: llama.cpp Q4_0 rollouts and 4 optimizer steps "
                                   "per rollout batch, all anchored on mu (fp8_stale's shape)",
                          "overrides": departing("rollout.engine=llamacpp", "rollout.precision=q4_0",
                                                 "updates_per_batch=4"), "opt_in": True},
    # SmolLM2's realistic engine mismatch: Q8_0 measures between bf16 and fp8 there (mean |pi - mu| 0.0105 against
    # 0.0061 and 0.0281; Q4_0 0.086, harsher than serving practice), with fp8_stale's 4 updates per batch
    "llamacpp_q8_stale": {"about": "a real engine with staleness: llama.cpp Q8_0 rollouts and 4 optimizer steps per "
                                   "rollout batch, all anchored on mu (fp8_stale's shape)",
                          "overrides": departing("rollout.engine=llamacpp", "rollout.precision=q8_0",
                                                 "updates_per_batch=4"), "opt_in": True},
    # The off-policy sweep's staleness conditions with the engine's mismatch on top. Q4_0 because on the built-in
    # model it measures as fp8 does (mean |pi - mu| 0.0085 against 0.0073; Q8_0: 0.0017), so llamacpp_q4 stands
    # where fp8 stood and these where stale and stale_strong stood.
    "llamacpp_q4_lag": {"about": "staleness with a real engine: llama.cpp Q4_0 rollouts, 4 optimizer steps per "
                                 "rollout batch, rollouts from weights 2 steps old (stale's shape)",
                        "overrides": departing("rollout.engine=llamacpp", "rollout.precision=q4_0",
                                               "updates_per_batch=4", "rollout.lag=2"), "opt_in": True},
    "llamacpp_q4_lag_strong": {"about": "strong staleness with a real engine: llama.cpp Q4_0 rollouts, 8 optimizer "
                                        "steps per rollout batch, rollouts 4 steps old (stale_strong's shape)",
                               "overrides": departing("rollout.engine=llamacpp", "rollout.precision=q4_0",
                                                      "updates_per_batch=8", "rollout.lag=4"), "opt_in": True},
}


def get_conditions(names: list[str] | None) -> dict[str, dict]:
    """The named presets in the order given (default: all but the opt-in ones); an unknown name lists the valid
    ones."""
    names = names or [name for name, condition in CONDITIONS.items() if not condition.get("opt_in")]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(unknown)}. Valid conditions: {', '.join(CONDITIONS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"conditions given twice: {' '.join(names)}")
    return {name: CONDITIONS[name] for name in names}
