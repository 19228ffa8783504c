"""drpo from Python (a notebook, a script): a config, your reward function and your rows in, the run out.

    from drpo import RunConfig, train

    def exact(completions, answer, **kwargs):          # TRL's reward signature
        return [float(c == a) for c, a in zip(completions, answer)]

    rows = [{"prompt": "abc=", "answer": "cba"}, ...]
    result = train(RunConfig(steps=20, out="runs/reverse"), reward=exact, dataset=rows)
    result.summary["eval/accuracy_final"], result.series("reward/mean"), result.run_dir

``reward`` (a function, or a list of them with ``task.reward_weights``) and ``dataset`` / ``eval_dataset``
(a list of dicts, a ``datasets.Dataset``, or a path) make the task ``custom`` (drpo/tasks/custom.py): the
same rows and reward calls as ``drpo train task=custom data=FILE task.reward=module:function``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drpo.config import RunConfig, apply_override, load_config, parse_value, validate
from drpo.metrics import read_metrics
from drpo.trainer import Trainer


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict  # summary.json: start, final and best eval accuracy, steps, wall time, base model
    metrics: list[dict]  # metrics.jsonl: one dict per step (step 0: the evaluation before training)

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of ``key`` at every step that logged it, e.g. series("eval/accuracy")."""
        return [(record["step"], record[key]) for record in self.metrics if key in record]


def train(config: RunConfig | dict | str | Path | None = None, *, reward=None, dataset=None, eval_dataset=None,
          overrides: list[str] | tuple[str, ...] = (), console=None) -> TrainResult:
    """Train as ``drpo train`` does and return the run's summary and metrics.

    ``config``: a RunConfig, a dict of its keys (``{"task": {"name": "custom"}, "steps": 20}``), a YAML file,
    or None (the defaults); ``overrides`` are ``key=value`` strings applied on top, as on the command line.
    """
    objects = {k: v for k, v in (("reward", reward), ("dataset", dataset), ("eval_dataset", eval_dataset))
               if v is not None}
    config = _resolve(config, overrides, custom=bool(objects))
    task = config.task.build(config.seed, pretrained_model=config.model.pretrained, **objects) if objects else None
    summary = Trainer(config, console=console, task=task).train(console=console)
    return TrainResult(Path(config.out), summary, read_metrics(config.out))


def _resolve(config, overrides, custom: bool) -> RunConfig:
    if config is None or isinstance(config, (str, Path)):
        tree = load_config(config).model_dump(mode="json") if config is not None else {}
    elif isinstance(config, RunConfig):
        tree = config.model_dump(mode="json")
    elif isinstance(config, dict):
        tree = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    else:
        raise TypeError(f"config must be a RunConfig, a dict, a YAML path or None, not {type(config).__name__}")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override '{item}' is not key=value (e.g. steps=100, loss.delta=0.2)")
        apply_override(tree, key.strip(), parse_value(text.strip()))
    if custom:  # reward or rows given: the task is theirs (arith is only the default's name)
        task = tree.setdefault("task", {})
        if isinstance(task, str):
            task = tree["task"] = {"name": task}
        if task.get("name", "custom") not in ("custom", "arith"):
            raise ValueError(f"reward and dataset objects make a task=custom run, but the config says "
                             f"task={task['name']}")
        task["name"] = "custom"
    return validate(tree)
