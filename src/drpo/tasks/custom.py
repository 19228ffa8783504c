"""Your own task: rows as you keep them, scored by reward functions written for TRL or for verl.

    task = CustomTask(data="train.jsonl", reward=["my_rewards:exact"], pretrained_model=True)
    task.train[0]                                  # Row(prompt='...', answer='...', messages=None, columns={...})
    task.score(["a completion"], [task.train[0]])  # Scores(rewards=[1.0], metrics={'reward/exact/mean': 1.0, ...})

**Rows.** A JSON-lines (``.jsonl``), JSON-list (``.json``) or Parquet file, a ``datasets`` directory written
by ``save_to_disk`` (its ``train`` split, and its ``test`` or ``validation`` split as the held-out one), or,
from Python, a list of dicts or a ``datasets.Dataset``. The ``prompt_field`` column (``prompt``) is plain
text or chat messages (``[{"role": "user", "content": ...}, ...]``, put through the model's chat template
whole, system turns included); every column is passed to the reward functions (the prompt as
``prompts``). ``answer_field`` (``answer``) is the reference answer: the built-in model needs it (its
supervised warm-up imitates it, and its character vocabulary is extended by every character of the
prompts and answers); a pretrained model does not.

**Bad rows** (a line that is not JSON, a row that is not an object, a prompt column missing, empty or of
another type, a reference missing where the built-in model needs one) stop loading with an error naming
the source, the row and the column; with ``skip_bad_rows`` they are skipped and counted in
``task.skipped``. An empty source, or one without a usable row, is always an error.

**Rewards**, as TRL calls them: ``f(prompts=[...], completions=[...], completion_ids=[...], **columns)``,
one call per batch, each column a list with one value per completion, returning one float, or None
("does not apply"), per completion. Completions are strings, or ``[{"role": "assistant", "content":
text}]`` when the prompt is chat messages (TRL's conversational format). A function without ``**kwargs``
gets only the arguments it names. ``log_metric(name, value)`` is passed too (logged as
``reward/NAME``); TRL's ``trainer_state`` and ``log_extra`` are not (there is no completions table). verl's ``compute_score(data_source, solution_str, ground_truth, extra_info)`` is called
once per completion with the row's ``data_source`` (else ``"custom"``), ``reward_model.ground_truth``
(else the ``answer_field`` column) and ``extra_info`` columns; it may return a number or a dict with
``score`` (its other numeric keys are logged). Several functions combine as TRL combines them: the
weighted sum over the functions that returned a number; a completion none of them scored has no
reward (NaN): it is left out of its group's baseline and gets advantage 0.

**Failures.** An exception in a reward function is retried sample by sample to find the samples that
fail; each is unscored by that function (a warning names the function, the sample and the exception,
once per function; ``reward/NAME/errors`` counts them). When more than half of a batch fails, the run
stops with :class:`RewardError` and that message. A wrong return (not one number or None per
completion) stops it at once.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import numbers
import random
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drpo.tasks.base import DataTask, Scores
from drpo.tasks.data import DataError
from drpo.tasks.rows import Row, parse_rows, read_source

MOST_OF_A_BATCH = 0.5  # a reward failing on more than this fraction of a batch stops the run


class RewardError(RuntimeError):
    """A reward function that failed on most of a batch, or returned something other than one score per completion."""


# --------------------------------------------------------------------------------------------- rewards
@dataclass
class RewardFunction:
    """A user's reward function, how it is called (trl or verl), its weight and its name in the metrics."""

    fn: Callable
    name: str
    weight: float = 1.0
    style: str = "trl"
    warned: bool = False

    @classmethod
    def resolve(cls, reference, weight: float = 1.0, style: str = "auto") -> RewardFunction:
        fn = reference if callable(reference) else load_function(reference)
        name = getattr(fn, "__name__", None) or type(fn).__name__
        if style == "auto":
            style = "verl" if "solution_str" in _parameters(fn) else "trl"
        return cls(fn, name, float(weight), style)

    def __call__(self, completions: list[str], examples: list[Row], completion_ids: list[list[int]] | None,
                 metrics: dict[str, float]) -> list[float]:
        """One score per completion (NaN: not scored); failing samples are found, counted and reported."""
        try:
            scores = self._batch(completions, examples, completion_ids, metrics)
            metrics[f"reward/{self.name}/errors"] = 0.0
            return scores
        except RewardError:
            raise
        except Exception:  # find the failing samples: retry one at a time
            pass
        scores, failures = [], []
        for i, (text, example) in enumerate(zip(completions, examples, strict=True)):
            try:
                scores += self._batch([text], [example], None if completion_ids is None else [completion_ids[i]], {})
            except RewardError:
                raise
            except Exception as error:
                scores.append(math.nan)
                failures.append((i, error))
        if failures:
            i, error = failures[0]
            message = (f"reward function {self.name!r} failed on {len(failures)} of {len(completions)} samples; "
                       f"sample {i} (row {examples[i].number}, prompt {examples[i].prompt[:80]!r}, completion "
                       f"{completions[i][:80]!r}): {type(error).__name__}: {error}")
            if len(failures) > MOST_OF_A_BATCH * len(completions):
                raise RewardError(message + ". Most of the batch failed: the run stops; fix the function "
                                  "(or let it return None for samples it cannot score)") from error
            if not self.warned:
                warnings.warn(message + "; those samples are unscored by it (reported once; counted in "
                              f"reward/{self.name}/errors)", stacklevel=2)
                self.warned = True
        metrics[f"reward/{self.name}/errors"] = float(len(failures))
        return scores

    def _batch(self, completions, examples, completion_ids, metrics) -> list[float]:
        if self.style == "verl":
            return [self._verl_one(text, example, metrics) for text, example in zip(completions, examples, strict=True)]
        keys = dict.fromkeys(key for ex in examples for key in ex.columns)
        columns = {key: [ex.columns.get(key) for ex in examples] for key in keys}
        arguments = {**columns, "prompts": [ex.reward_prompt for ex in examples],
                     "completions": [text if ex.messages is None else [{"role": "assistant", "content": text}]
                                     for text, ex in zip(completions, examples, strict=True)],
                     "completion_ids": completion_ids,
                     "log_metric": lambda key, value: metrics.__setitem__(f"reward/{key}", float(value))}
        parameters = _parameters(self.fn)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            missing = [name for name, p in parameters.items() if name not in arguments and p.default is p.empty
                       and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if missing:
                raise RewardError(f"reward function {self.name!r} needs {', '.join(missing)}, which is no column of "
                                  f"the data; it gets prompts, completions, completion_ids and the columns "
                                  f"{', '.join(columns) or '(none)'}")
            arguments = {k: v for k, v in arguments.items() if k in parameters}
        return self._checked(self.fn(**arguments), completions)

    def _verl_one(self, text: str, example: Row, metrics: dict[str, float]) -> float:
        columns = example.columns
        reward_model = columns.get("reward_model")
        ground_truth = (reward_model["ground_truth"] if isinstance(reward_model, dict) and "ground_truth" in reward_model
                        else example.answer or None)
        result = self.fn(data_source=columns.get("data_source", "custom"), solution_str=text,
                         ground_truth=ground_truth, extra_info=columns.get("extra_info"))
        if isinstance(result, dict):
            if "score" not in result:
                raise RewardError(f"reward function {self.name!r} returned a dict without 'score': {sorted(result)}")
            for key, value in result.items():  # verl's reward_extra_info, as a batch mean (metrics holds one value)
                if key != "score" and isinstance(value, numbers.Real):
                    metrics[f"reward/{self.name}/{key}"] = float(value)
            result = result["score"]
        return self._checked([result], [text])[0]

    def _checked(self, scores, completions: list[str]) -> list[float]:
        """``scores`` as floats (None -> NaN, "not scored"), once they are one finite number or None per completion.

        NaN and infinity are refused rather than read as None: a NaN reward almost always is a bug (0/0 in the
        function), and treating it as "not scored" would train on nothing while looking like a run."""
        count = len(completions)
        if hasattr(scores, "tolist"):  # a NumPy array or tensor
            scores = scores.tolist()
        if not isinstance(scores, (list, tuple)) or len(scores) != count:
            got = f"{len(scores)} values" if isinstance(scores, (list, tuple)) else f"a {type(scores).__name__}"
            raise RewardError(f"reward function {self.name!r} returned {got}; it must return a list of {count} "
                              "(one float, or None, per completion)")
        bad = [s for s in scores if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real))]
        if bad:
            raise RewardError(f"reward function {self.name!r} returned {bad[0]!r} ({type(bad[0]).__name__}); each "
                              "score must be a number or None")
        for i, score in enumerate(scores):
            if score is not None and not math.isfinite(score):
                raise RewardError(f"reward function {self.name!r} returned {score} for sample {i} (completion "
                                  f"{completions[i][:80]!r}); a reward must be a finite number, or None for a sample "
                                  "it cannot score")
        return [math.nan if s is None else float(s) for s in scores]


def load_function(reference: str) -> Callable:
    """``module:function`` (importable) or ``path/to/file.py:function``; dotted attributes allowed."""
    module_name, sep, attribute = str(reference).rpartition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"task.reward {reference!r} must be module:function or file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FileNotFoundError(f"file {path} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = _import_beside_cwd(module_name)
    except Exception as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError) and not module_name.endswith(".py"):
            hint = (f" (drpo looked in the current directory {Path.cwd()} and on sys.path; for a file give its path, "
                    f"task.reward={module_name.replace('.', '/')}.py:{attribute}, or add its directory to PYTHONPATH)")
        raise ValueError(f"task.reward {reference!r}: cannot import {module_name!r}: {type(error).__name__}: {error}"
                         f"{hint}") from error
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            functions = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise ValueError(f"task.reward {reference!r}: {module_name} has no {attribute!r}; its functions: "
                             f"{', '.join(functions) or '(none)'}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"task.reward {reference!r} is a {type(target).__name__}, not a function")
    return target


def _import_beside_cwd(module_name: str):
    """``module_name`` imported as ``python script.py`` would find it: the current directory is searched too.

    A console script (``drpo``) does not put the current directory on sys.path, while TRL users keep their reward
    module beside the script. It goes last, so a file of the current directory never shadows an installed module.
    """
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(module_name)


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: call it with everything
        return {"kwargs": inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)}


def combine(per_function: list[list[float]], weights: list[float]) -> list[float]:
    """TRL's combination: sum of weight x score over the functions that scored a completion; NaN when none did.

    >>> combine([[1.0, math.nan, math.nan], [0.5, 0.5, math.nan]], [1.0, 2.0])
    [2.0, 1.0, nan]
    """
    combined = []
    for scores in zip(*per_function, strict=True):
        scored = [w * s for w, s in zip(weights, scores, strict=True) if not math.isnan(s)]
        combined.append(sum(scored) if scored else math.nan)
    return combined


# --------------------------------------------------------------------------------------------- the task
class CustomTask(DataTask):
    """Rows from ``data`` (and ``eval_data``), scored by ``reward`` (references or functions; see the module docstring).

    Without ``eval_data`` (or a held-out split of a datasets directory), ``eval_fraction`` of the rows, drawn
    with ``seed`` (at least one, at most half), are held out for evaluation. ``pretrained_model``: the rows are
    for a pretrained model, so references are optional and ``max_prompt_len`` (tokens) drops longer prompts;
    for the built-in model the lengths follow from the data (characters).
    """

    name = "custom"

    def __init__(self, seed: int = 0, data=None, eval_data=None, reward=(), reward_weights=None,
                 reward_style: str = "auto", prompt_field: str = "prompt", answer_field: str = "answer",
                 skip_bad_rows: bool = False, eval_fraction: float = 0.1, pretrained_model: bool = False,
                 max_prompt_len: int | None = None, max_response_len: int | None = None) -> None:
        if data is None:
            raise ValueError("task=custom needs data: data=FILE (.jsonl, .json, .parquet or a datasets directory), "
                             "or dataset=... in drpo.train")
        references = [reward] if callable(reward) or isinstance(reward, str) else list(reward)
        if not references:
            raise ValueError("task=custom needs a reward function: task.reward=module:function (or [mod:f1,mod:f2]), "
                             "or reward=FUNCTION in drpo.train")
        weights = [1.0] * len(references) if reward_weights is None else list(reward_weights)
        if len(weights) != len(references):
            raise ValueError(f"{len(weights)} reward weights for {len(references)} reward functions")
        self.rewards = [RewardFunction.resolve(r, w, reward_style) for r, w in zip(references, weights, strict=True)]
        names = [f.name for f in self.rewards]
        for i, f in enumerate(self.rewards):  # the same function twice: distinct metric keys
            if names.count(f.name) > 1:
                f.name = f"{f.name}_{names[:i].count(names[i])}"
        self.seed = seed
        need_answer = None if pretrained_model else "the built-in model's warm-up imitates it"
        options = dict(prompt_field=prompt_field, answer_field=answer_field, need_answer=need_answer,
                       skip_bad_rows=skip_bad_rows)
        label, rows, held_out = read_source(data, "data")
        self.train, skipped = parse_rows(rows, label, **options)
        self.skipped = {"train": skipped, "eval": 0}
        if eval_data is not None:
            label, rows, _ = read_source(eval_data, "eval data")
            self.eval, self.skipped["eval"] = parse_rows(rows, label, **options)
        elif held_out is not None:
            self.eval, self.skipped["eval"] = parse_rows([(n, r, None) for n, r in enumerate(held_out, start=1)],
                                                         f"{label.rsplit(' split ', 1)[0]} held-out split", **options)
        else:
            if len(self.train) < 2:
                raise DataError(f"{label} has {len(self.train)} usable row; holding out evaluation rows needs at "
                                "least 2, or give task.eval_data")
            count = min(len(self.train) // 2, max(1, round(eval_fraction * len(self.train))))
            held = set(random.Random(seed).sample(range(len(self.train)), count))
            self.eval = [row for i, row in enumerate(self.train) if i in held]
            self.train = [row for i, row in enumerate(self.train) if i not in held]
        everything = self.train + self.eval
        if not pretrained_model and any(row.messages is not None for row in everything):
            raise DataError("the built-in model reads plain-text prompts; chat messages need a pretrained model "
                            "(model=smollm2-135m, hf:DIR)")
        self._max_prompt_len = max_prompt_len or 1 + max(len(row.prompt) for row in everything)  # + BOS
        self._max_response_len = max_response_len or 1 + max(len(row.answer) for row in everything)  # + EOS
        self.characters = "".join(sorted({c for row in everything for c in row.prompt + row.answer}))

    @property
    def fingerprint(self) -> str:
        """Hash of the rows and splits: the built-in base model's cache key (the config names only the file)."""
        splits = [[[row.prompt, row.answer] for row in split] for split in (self.train, self.eval)]
        return hashlib.sha256(json.dumps(splits).encode()).hexdigest()[:16]

    def score(self, completions: list[str], examples: list, completion_ids: list[list[int]] | None = None) -> Scores:
        metrics: dict[str, float] = {}
        per_function = [f(completions, examples, completion_ids, metrics) for f in self.rewards]
        rewards = combine(per_function, [f.weight for f in self.rewards])
        for f, scores in zip(self.rewards, per_function, strict=True):
            scored = [s for s in scores if not math.isnan(s)]
            metrics[f"reward/{f.name}/mean"] = sum(scored) / len(scored) if scored else math.nan
        metrics["reward/unscored_frac"] = sum(math.isnan(r) for r in rewards) / max(1, len(rewards))
        return Scores(rewards, metrics)

    def reward(self, completion: str, example: Row) -> float:
        """The combined reward of one completion (NaN when no function scores it)."""
        return self.score([completion], [example]).rewards[0]

    def target(self, example: Row) -> str:
        return example.answer
