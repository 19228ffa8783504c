"""The task section: which verifiable task, its data and reward options, and how it is built."""

from __future__ import annotations

from typing import Literal

import pydantic

from drpo.config.sections import Section, list_of
from drpo.constants import MATH_PROMPT_TEMPLATE


class TaskConfig(Section):
    name: str = pydantic.Field(
        "arith", description="verifiable task: arith (addition), sort, chain (a chain of additions and subtractions "
        "worked step by step: long replies), math (data file), or custom (your data and reward functions)")
    digits: int | None = pydantic.Field(None, ge=1, le=12, description="operand digits (task default if unset)")
    terms: int | None = pydantic.Field(
        None, ge=1, le=64, description="chain: operations after the start number (default 8)")
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
        MATH_PROMPT_TEMPLATE, description="text around each problem; {prompt} is replaced by the problem")
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
            # lazy: reading a config imports no task (the values they share are in drpo.constants)
            from drpo.tasks.math import compile_prompt_pattern

            compile_prompt_pattern(self.prompt_pattern)  # the task checks its own regex: a bad one fails here, named
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
        from drpo.tasks import get_task  # lazy: reading a config imports no task (as in the checks above)

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
            options = {"chat": self.chat(pretrained_model)} if self.name in ("arith", "sort", "chain") else {}
            if self.terms is not None:
                options["terms"] = self.terms
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
CHAIN_TASK_FIELDS = ("terms",)
TASK_FIELDS = {"math": MATH_TASK_FIELDS, "custom": CUSTOM_TASK_FIELDS, "chain": CHAIN_TASK_FIELDS}
TASK_SPECIFIC_FIELDS = tuple(dict.fromkeys(MATH_TASK_FIELDS + CUSTOM_TASK_FIELDS + CHAIN_TASK_FIELDS))
DEFAULT_CUSTOM_RESPONSE_LEN = 256  # tokens a pretrained model may write on task=custom unless max_response_len says
