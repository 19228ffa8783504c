"""Values written once that a run config and the code it configures both read.

The allowed values of the config keys that pick an implementation: drpo/config validates against them (a bad
value is an error naming the key and these values) and the implementing modules dispatch on them; and the
math task's default prompt template, which is task.prompt_template's default too. This module imports
nothing, so the config reads them without importing the implementations (torch, the task readers).
rollout.engine and rollout.precision are drpo.behavior.modes' (ENGINES, ROLLOUT_MODES), which imports nothing either.
"""

HF_DTYPES = ("fp32", "bf16")  # model.dtype, the weights of an hf: model (drpo/models/hf.py)
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # those names as torch and vLLM spell them
# loss.aggregation (drpo/losses/aggregate.py)
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ESTIMATORS = ("grpo", "rloo")  # advantage.estimator (drpo/advantages.py)
TRACKERS = ("tensorboard", "wandb", "none")  # report_to (drpo/metrics.py)

# task.prompt_template's default, and MathTask's: the text around each problem of task=math
MATH_PROMPT_TEMPLATE = "{prompt}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
