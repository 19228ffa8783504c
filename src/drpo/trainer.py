"""The RL trainer: one step reads top to bottom as the data flow.

    prompts (task) -> rollout with the behavior policy mu -> rewards (verifier) -> advantages (group)
    -> for each mini-batch: log pi, policy loss, aggregate, backward, clip, optimizer step
    -> sync weights to the behavior policy (possibly lagged) -> metrics

Where the numbers come from: mu log-probs are recorded by the behavior policy's engine (drpo/behavior/) from the
distribution it sampled; pi log-probs are recomputed here by the trainer's model in fp32. Around the step:
evaluation (drpo/evaluation.py), the optimizer and its schedule (drpo/optim.py), checkpoints and resuming
(drpo/checkpoint.py), the progress display and stop signals (drpo/display.py), summary.json (drpo/summary.py).
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drpo.adaptive import DeltaTracker, boundary
from drpo.advantages import group_advantages
from drpo.backends import build_behavior, build_policy
from drpo.behavior import SamplingParams
from drpo.checkpoint import (
    copy_history,
    global_rng_state,
    resume_state,
    save_checkpoint,
    set_global_rng_state,
)
from drpo.config import RunConfig, check_out, check_steps
from drpo.diagnostics import pull_gradient_norms
from drpo.display import StopRequests, progress_display
from drpo.evaluation import evaluate
from drpo.losses import aggregate
from drpo.metrics import MetricsLogger, mean_of
from drpo.mismatch.dump import TrainerDump
from drpo.mismatch.stats import step_metrics
from drpo.models.policy import Policy
from drpo.models.sampling import RolloutBatch
from drpo.optim import build_optimizer

# We do not truncate pi: the nucleus is mu's, cut from the behavior policy's own logits (another precision,
# stale weights, vLLM), which the trainer does not have; pi's own nucleus would be a different set.
TOP_P_WARNING = (
    "rollout.top_p={top_p} < 1: mu is the nucleus-truncated distribution the sampler drew from, while pi is "
    "recomputed untruncated, so every sampled token has pi < mu and every trust region reacts to that gap as if "
    "it were off-policy drift (mean |pi - mu| ~ 2e-2 at top_p=0.9). Use top_p=1 for training rollouts (verl's and "
    "TRL's default too); see the README, 'Sampling with top_p < 1'.")

# bf16 weights hold 8 bits of mantissa: an AdamW step of lr ~1e-5 on a weight of ~0.05 is ~2e-4 of it, under
# the 2^-8 = 4e-3 spacing, so most updates round away (measured, docs/benchmarks.md).
BF16_WEIGHTS_WARNING = (
    "model.dtype=bf16 trains the weights themselves in bfloat16 (no float32 master copy): optimizer steps smaller "
    "than bf16's resolution (2^-8 of a weight) round away, so small learning rates barely move the policy "
    "(SmolLM2-135M at lr 1e-5: held-out accuracy 0.12 -> 0.18 in 20 steps in bf16, 0.11 -> 0.60 in 10 in fp32). "
    "Keep model.dtype=fp32 and set model.autocast=bf16 for bf16 compute over float32 master weights.")


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class UpdateResult:
    metrics: dict[str, float]
    skipped: bool
    log_prob: torch.Tensor  # [n, T] log pi at this update, detached (pi_old with one update; the log-prob dump)


@dataclass
class PiOld:
    """pi_old of one batch: its log-probs under the weights that sampled it, before this step's updates.

    Built by :meth:`Trainer.pi_old`, which decides where it comes from: a no-grad forward before the updates
    (``before``, which the loss may anchor on), or, with one update per batch that the loss does not anchor on
    pi_old, that update's own forward, which runs on exactly those weights (no extra pass)."""

    before: torch.Tensor | None  # [N, T] from the forward before the updates; None: not computed
    from_update: bool

    def rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """What a mini-batch's update gets as ``old_log_prob``: its rows of the forward before the updates."""
        return None if self.before is None else self.before[rows]

    def after(self, log_prob: torch.Tensor) -> torch.Tensor | None:
        """pi_old [N, T] once the updates ran, given ``log_prob`` [N, T], pi at each row's update (batch order)."""
        return log_prob if self.from_update else self.before


class Trainer:
    def __init__(self, config: RunConfig, console=None, task=None):
        created = time.perf_counter()
        self.config = config
        self.run_dir = Path(config.out)
        # refusals before any work (the base model's warm-up takes minutes): an out that holds another run, or a
        # resume that would not continue its run
        check_out(config)
        self.resumed = resume_state(config) if config.resume else None
        if self.resumed is not None:
            check_steps(self.resumed["step"], config)
        seed_everything(config.seed)
        # model, tokenizer, task (``task``: one built by the caller, drpo.api.train), base-model warm-up
        self.policy: Policy = build_policy(config, console=console, task=task)
        self.model = self.policy.model
        self.task = self.policy.task
        self.loss = config.loss.build()
        self.horizon = config.loss.horizon or self.task.max_response_len
        self.optimizer, self.scheduler = build_optimizer(self.model, config)
        self.behavior = build_behavior(config, self.policy)  # native copy (precision, lag) or vLLM (hf: models)
        self.device = next(self.model.parameters()).device  # cpu, or where an hf: model was put (model.device)
        if config.rollout.top_p < 1:
            warnings.warn(TOP_P_WARNING.format(top_p=config.rollout.top_p), stacklevel=2)
        # LoRA adapters stay float32 under peft, so only full fine-tuning trains bf16 weights
        if config.model.dtype == "bf16" and not config.model.lora_rank and config.steps > 0:  # dtype: hf: models only
            warnings.warn(BF16_WEIGHTS_WARNING, stacklevel=2)
        self.sampler = torch.Generator(self.device).manual_seed(config.seed)  # rollouts and mini-batch order
        self.prompt_rng = np.random.default_rng(config.seed)  # which training prompts each step sees
        self.step = 0
        self.bad_steps = 0
        self.log_prob_dump: TrainerDump | None = None  # OUT/log_probs.jsonl when dump_log_probs (set by train)
        self.start_accuracy: float | None = None
        self.best_accuracy: float | None = None
        adaptive = config.adaptive_delta  # experimental: the loss's boundary from the measured mismatch
        self.delta_tracker = DeltaTracker(adaptive.quantile, adaptive.multiple, adaptive.ema, adaptive.min_delta,
                                          adaptive.max_delta) if adaptive.enabled else None
        self.rl_time_s = self.resumed_rl_s = 0.0  # evaluations and RL steps, over the run's processes (checkpointed)
        self.setup_s = time.perf_counter() - created  # this process: base model (warm-up or cache), engine
        if len(self.task.eval) < config.eval.prompts and console is not None:
            console.print(f"eval.prompts={config.eval.prompts}, but the held-out split has {len(self.task.eval)} "
                          f"prompts: each evaluation uses those {len(self.task.eval)}", highlight=False)

    # ----------------------------------------------------------------------------- one RL step
    def train_step(self) -> dict[str, float]:
        cfg = self.config
        examples = self.next_examples()
        start = time.perf_counter()
        batch = self.rollout(examples)
        rollout_s = time.perf_counter() - start
        scores = self.score(examples, batch)
        rewards = torch.tensor(scores.rewards, device=self.device)  # [N] NaN: no reward applies (advantage 0)
        verifier_errors = self.task.verifier_errors(len(rewards))  # raises when most rewards failed
        advantages = group_advantages(rewards, batch.group_index, cfg.advantage.estimator,
                                      cfg.advantage.std_normalize)  # [N]

        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.delta_tracker is not None:  # this step's boundary, from the mismatch of the steps before it
            self.loss = self.delta_tracker.apply(self.loss)
            metrics["loss/delta"] = boundary(self.loss)
        pi_old = self.pi_old(batch)
        updates = [(rows, self.update(mini_batch, advantages[rows], pi_old.rows(rows),
                                      diagnose=cfg.diagnose_pull and i == 0))  # once a step: 2 extra backwards
                   for i, (rows, mini_batch) in enumerate(minibatches(batch, cfg.updates_per_batch, self.sampler))]
        update_s = time.perf_counter() - start
        log_prob = in_batch_order(batch.rollout_log_prob, [(rows, u.log_prob) for rows, u in updates])  # [N, T]
        old_log_prob = pi_old.after(log_prob)
        if old_log_prob is not None:
            if self.delta_tracker is not None:
                self.delta_tracker.observe(old_log_prob, batch.rollout_log_prob, batch.response_mask)
            metrics.update(step_metrics(old_log_prob, batch.rollout_log_prob, batch.response_mask))
        if self.log_prob_dump is not None:  # mu, pi_old and each row's pi at its update, policy version of mu
            self.log_prob_dump.write_step(self.step + 1, max(0, self.step - cfg.rollout.lag), batch, advantages,
                                          old_log_prob, log_prob)
        start = time.perf_counter()
        self.behavior.sync(self.model)  # the new weights reach the engine (llama.cpp: a GGUF rewrite and reload)
        sync_s = time.perf_counter() - start

        metrics.update(mean_of([u.metrics for _, u in updates]))
        metrics.update(scores.metrics)
        scored = rewards[~rewards.isnan()]
        metrics.update({
            "reward/mean": scored.mean().item() if len(scored) else math.nan,
            "reward/std": scored.std().item() if len(scored) > 1 else 0.0,
            "reward/verifier_errors": float(verifier_errors),
            "response_length/mean": batch.response_mask.sum(-1).float().mean().item(),
            "updates/skipped": float(sum(u.skipped for _, u in updates)),
            "lr": self.scheduler.get_last_lr()[0],
            "time/rollout_s": rollout_s,
            "time/update_s": update_s,
            "time/sync_s": sync_s,
            "throughput/tokens_per_s": float(batch.response_mask.sum()) / max(rollout_s + update_s, 1e-9),
        })
        return metrics

    def next_examples(self) -> list:
        train = self.task.train
        picks = self.prompt_rng.choice(len(train), size=self.config.rollout.prompts,
                                       replace=len(train) < self.config.rollout.prompts)
        return [train[int(i)] for i in picks]

    def rollout(self, examples: list) -> RolloutBatch:
        """rollout.group_size responses to each prompt, sampled by the behavior policy mu with its log-probs."""
        cfg, tokenizer = self.config.rollout, self.policy.tokenizer
        sampling = SamplingParams(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, temperature=cfg.temperature,
                                  top_p=cfg.top_p, top_k_logprobs=self.config.top_k_logprobs,
                                  ignore_eos=cfg.ignore_eos, stop=self.policy.stopper(), generator=self.sampler)
        return self.behavior.generate([self.policy.encode_prompt(ex) for ex in examples], group_size=cfg.group_size,
                                      max_new_tokens=self.task.max_response_len, sampling=sampling)

    def score(self, examples: list, batch: RolloutBatch):
        """The task's verifier on each response (text and token ids) against its prompt's example: Scores."""
        lengths = batch.response_mask.sum(-1)  # [N]
        ids = [row[:int(n)] for row, n in zip(batch.response_ids.tolist(), lengths, strict=True)]
        return self.task.score(self.policy.decode_responses(batch), [examples[int(g)] for g in batch.group_index], ids)

    def pi_old(self, batch: RolloutBatch) -> PiOld:
        """Where this batch's pi_old comes from (:class:`PiOld`); the forward before the updates runs here.

        recompute_old_log_prob asks for it (mismatch/* metrics, the adaptive delta, the dump); anchor=recompute
        losses need it before their updates. With one update per batch and a loss not anchored on it, the
        update's own forward is on the same weights, so it is read from there instead of a second forward."""
        cfg = self.config
        anchored = self.loss.hyper.anchor == "recompute"
        if cfg.recompute_old_log_prob and cfg.updates_per_batch == 1 and not anchored:
            return PiOld(None, from_update=True)
        if not (cfg.recompute_old_log_prob or anchored):
            return PiOld(None, from_update=False)
        with torch.no_grad(), self.trainer_numerics():
            return PiOld(self.policy.log_probs(batch, cfg.rollout.temperature).log_prob, from_update=False)

    def trainer_numerics(self) -> torch.autocast:
        """pi's forward (and so its backward): bf16 autocast over the float32 weights with model.autocast=bf16."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.model.autocast == "bf16")

    def update(self, batch: RolloutBatch, advantages: torch.Tensor, old_log_prob: torch.Tensor | None,
               diagnose: bool = False) -> UpdateResult:
        """One optimizer step on one mini-batch; a non-finite loss or gradient leaves the weights untouched.

        ``diagnose``: also log the gradient norms of the loss's policy-gradient and pull parts (drpo.diagnostics).
        """
        cfg = self.config
        self.model.train()
        with self.trainer_numerics():
            forward = self.policy.log_probs(batch, cfg.rollout.temperature, keep_logits=self.loss.spec.needs_topk)
        out = self.loss(log_prob=forward.log_prob, rollout_log_prob=batch.rollout_log_prob,
                        advantages=advantages, response_mask=batch.response_mask, old_log_prob=old_log_prob,
                        rollout_topk_ids=batch.rollout_topk_ids, rollout_topk_log_probs=batch.rollout_topk_log_probs,
                        logits=forward.logits if self.loss.spec.needs_topk else None, response_ids=batch.response_ids)
        loss = aggregate(out.per_token, batch.response_mask, cfg.loss.aggregation, self.horizon)
        if cfg.model.moe:  # the router's load-balancing loss of this forward, as in the warm-up
            moe_aux = self.model.aux_loss
            loss = loss + cfg.optim.moe_aux_coef * moe_aux
        self.optimizer.zero_grad(set_to_none=True)
        skipped = not torch.isfinite(loss)
        grad_norm = float("nan")
        diagnosed = {}
        if diagnose and not skipped:
            diagnosed = pull_gradient_norms([p for p in self.model.parameters() if p.requires_grad], forward.log_prob,
                                            out, advantages, batch.response_mask, cfg.loss.aggregation, self.horizon)
        if not skipped:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip).item()
            skipped = not math.isfinite(grad_norm)
        if skipped:
            self.bad_steps += 1
            if self.bad_steps >= cfg.max_bad_steps:
                raise NonFiniteError(
                    f"{self.bad_steps} updates in a row had a non-finite loss or gradient (last loss {loss.item()}, "
                    f"grad norm {grad_norm}); weights were left untouched. Lower optim.lr, check the loss "
                    "hyper-parameters, or raise max_bad_steps to tolerate more")
        else:
            self.bad_steps = 0
            self.optimizer.step()
            self.scheduler.step()
        # gradients freed as soon as they are spent (or refused), not at the next backward: they would otherwise
        # sit beside the next forward's activations, the rollout and evaluation (0.5 GiB for SmolLM2-135M)
        self.optimizer.zero_grad(set_to_none=True)
        valid = batch.response_mask.bool()
        metrics = {**out.metrics, **diagnosed, "loss/value": loss.item(), "grad_norm": grad_norm,
                   "entropy": forward.entropy[valid].mean().item()}
        if cfg.model.moe:
            metrics["loss/moe_aux"] = moe_aux.item()  # 1.0 when routing is balanced
        return UpdateResult(metrics, skipped, forward.log_prob.detach())

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.policy, self.config, self.step)

    # ----------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "behavior": self.behavior.state_dict(),
            "sampler": self.sampler.get_state(), "prompt_rng": self.prompt_rng.bit_generator.state,
            **global_rng_state(),  # torch, Python, NumPy: plain values, so the checkpoint loads weights_only
            "bad_steps": self.bad_steps, "start_accuracy": self.start_accuracy, "best_accuracy": self.best_accuracy,
            "rl_time_s": self.rl_time_s,
            "config": self.config.model_dump(mode="json"),
            **({"delta_tracker": self.delta_tracker.state_dict()} if self.delta_tracker is not None else {}),
        }

    def load_state(self, state: dict) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.behavior.load_state_dict(state["behavior"])
        self.sampler.set_state(state["sampler"])
        self.prompt_rng.bit_generator.state = state["prompt_rng"]
        set_global_rng_state(state)
        self.bad_steps = state["bad_steps"]
        self.start_accuracy, self.best_accuracy = state["start_accuracy"], state["best_accuracy"]
        self.rl_time_s = state.get("rl_time_s", 0.0)  # checkpoints before it was recorded: this process's only
        self.resumed_rl_s = self.rl_time_s
        if self.delta_tracker is not None:
            self.delta_tracker.load_state_dict(state["delta_tracker"])

    def checkpoint(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints", self.state())

    # ----------------------------------------------------------------------------- the loop
    def train(self, console=None) -> dict:
        """Run until config.steps, evaluating, logging and checkpointing; returns summary.json's content.

        Stopped on non-finite losses (NonFiniteError), the run still gets its summary.json, saying so."""
        cfg = self.config
        resume_step = None
        if self.resumed is not None:  # checked in __init__, before config.yaml is written: a refusal changes nothing
            if self.resumed["step"] == cfg.steps and (finished := self.finished_summary(console)) is not None:
                return finished
            self.load_state(self.resumed)
            self.resumed = None  # the checkpoint's tensors are the model's now
            resume_step = self.step
            copy_history(cfg.resume, self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        logger = MetricsLogger(self.run_dir, cfg.report_to, resume_step, config=cfg.recorded())
        if cfg.dump_log_probs:
            self.log_prob_dump = TrainerDump(self.run_dir, f"drpo {cfg.rollout.precision} rollout, lag "
                                             f"{cfg.rollout.lag}", resume_step)
        started = time.perf_counter() - self.rl_time_s
        try:
            with progress_display(console, cfg.steps, self.step) as show, StopRequests() as stop:
                if self.step == 0:
                    first = {"step": 0, **self.evaluate()}
                    self.start_accuracy = self.best_accuracy = first["eval/accuracy"]
                    logger.log(first)
                while self.step < cfg.steps and not stop.requested:
                    metrics = self.train_step()
                    self.step += 1
                    if cfg.eval.due(self.step, cfg.steps):
                        metrics.update(self.evaluate())
                        self.best_accuracy = max(self.best_accuracy, metrics["eval/accuracy"])
                    logger.log({"step": self.step, **metrics})
                    show(self.step, metrics, self.best_accuracy)
                    self.rl_time_s = time.perf_counter() - started
                    if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self.checkpoint()
        except NonFiniteError as error:  # a finished run: a rerun would stop there again
            self.summary(started, stopped=f"non-finite loss: {error}")
            raise
        finally:
            logger.close()
        interrupted = stop.requested and self.step < cfg.steps
        self.rl_time_s = time.perf_counter() - started
        path = self.checkpoint()
        if interrupted:
            print(f"interrupted at step {self.step}: checkpoint {path}; continue with "
                  f"`drpo train resume={self.run_dir}`")
        return self.summary(started, interrupted=interrupted)

    def summary(self, started: float, interrupted: bool = False, stopped: str | None = None) -> dict:
        # lazy: matplotlib (the summary's figures), imported when a run ends, not with the trainer
        from drpo.summary import RunTimes, write_summary

        rl_s = time.perf_counter() - started
        return write_summary(self.run_dir, loss=self.loss, steps=self.step, steps_planned=self.config.steps,
                             start_accuracy=self.start_accuracy, best_accuracy=self.best_accuracy,
                             times=RunTimes(rl_s=rl_s, setup_s=self.setup_s,
                                            process_s=self.setup_s + rl_s - self.resumed_rl_s),
                             base_model=self.policy.base_info, interrupted=interrupted, stopped=stopped)

    def finished_summary(self, console=None) -> dict | None:
        """A resume of a run that already did its steps: nothing to do, and its record stays as it was. None when
        the record is not whole (no summary.json, or one of an interruption after the last checkpoint): the resume
        then writes it from the checkpoint, without training."""
        path = Path(self.config.resume) / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else None
        if summary is None or summary.get("interrupted") or summary.get("steps") != self.config.steps:
            return None
        if console is not None:
            console.print(f"{self.config.resume} already finished its {self.config.steps} steps; nothing to do "
                          f"(give steps=N > {self.config.steps} to extend it)", highlight=False)
        return summary


def minibatches(batch: RolloutBatch, count: int, generator: torch.Generator) -> list[tuple[torch.Tensor, RolloutBatch]]:
    """Exactly ``count`` disjoint mini-batches (rows [n], the rows' batch) of whole rows, in a random order drawn
    from ``generator``.

    Their sizes differ by at most one row (tensor_split; torch.chunk would cut 6 rows into 3 pieces of 2
    for 4 updates, while the learning-rate schedule counts steps x updates_per_batch).
    """
    if len(batch) < count:
        raise ValueError(f"updates_per_batch={count} mini-batches cannot be cut from {len(batch)} responses")
    order = torch.randperm(len(batch), generator=generator, device=generator.device)
    return [(rows, batch.select(rows)) for rows in order.tensor_split(count)]


def in_batch_order(like: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[N, T] (dtype and shape of ``like``) from the (rows [n], values [n, T]) of shuffled mini-batches, each row
    back at its place in the batch; rows no part holds are 0."""
    out = torch.zeros_like(like)
    for rows, values in parts:
        out[rows] = values.detach().to(out.dtype)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
