"""The RL trainer: one step reads top to bottom as DESIGN.md's data flow.

    prompts (task) -> rollout with the behavior policy mu -> rewards (verifier) -> advantages (group)
    -> for each mini-batch: log pi, policy loss, aggregate, backward, clip, optimizer step
    -> sync weights to the behavior policy (possibly lagged) -> metrics

Where the numbers come from: mu log-probs are recorded by the sampler (drpo/rollout.py) from the
distribution it sampled; pi log-probs are recomputed here by the trainer's model in fp32.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from drpo.adaptive import DeltaTracker, boundary
from drpo.advantages import group_advantages
from drpo.backends import build_behavior, build_policy
from drpo.checkpoint import global_rng_state, load_checkpoint, save_checkpoint, set_global_rng_state
from drpo.config import RunConfig, check_out, check_resume
from drpo.diagnostics import pull_gradient_norms
from drpo.losses import aggregate
from drpo.metrics import MetricsLogger, mean_of, mismatch_metrics
from drpo.mismatch.dump import TrainerDump
from drpo.mismatch.stats import step_metrics
from drpo.models.policy import Policy
from drpo.models.sampling import RolloutBatch

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
    log_prob: torch.Tensor | None = None  # [n, T] log pi at this update, detached (for the log-prob dump)


class Trainer:
    def __init__(self, config: RunConfig, console=None, task=None):
        self.config = config
        self.run_dir = Path(config.out)
        seed_everything(config.seed)
        # model, tokenizer, task (``task``: one built by the caller, drpo.api.train), base-model warm-up
        self.policy: Policy = build_policy(config, console=console, task=task)
        self.model = self.policy.model
        self.task = self.policy.task
        self.loss = config.loss.build()
        self.horizon = config.loss.horizon or self.task.max_response_len
        # fused: one pass over each parameter's weight, gradient and moments instead of a dozen foreach passes
        # (SmolLM2-135M: 0.17 s against 0.83 s of CPU per step, and the recipe steps 4 times per batch)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           weight_decay=config.optim.weight_decay, fused=True)
        total_updates = max(1, config.steps * config.updates_per_batch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, total_updates))
        self.behavior = build_behavior(config, self.policy)  # native copy (precision, lag) or vLLM (hf: models)
        self.device = next(self.model.parameters()).device  # cpu, or where an hf: model was put (model.device)
        self.top_k_logprobs = config.top_k_logprobs
        if config.rollout.top_p < 1:
            warnings.warn(TOP_P_WARNING.format(top_p=config.rollout.top_p), stacklevel=2)
        # LoRA adapters stay float32 under peft, so only full fine-tuning trains bf16 weights
        if config.model.dtype == "bf16" and not config.model.lora_rank and config.steps > 0:  # dtype: hf: models only
            warnings.warn(BF16_WEIGHTS_WARNING, stacklevel=2)
        self.sampler = torch.Generator(self.device).manual_seed(config.seed)  # rollouts and mini-batch order
        self.prompt_rng = np.random.default_rng(config.seed)  # which training prompts each step sees
        self.step = 0
        self.bad_steps = 0
        self.stop_requested = False
        self.log_prob_dump: TrainerDump | None = None  # OUT/log_probs.jsonl when dump_log_probs (set by train)
        self.start_accuracy: float | None = None
        self.best_accuracy: float | None = None
        adaptive = config.adaptive_delta  # experimental: the loss's boundary from the measured mismatch
        self.delta_tracker = DeltaTracker(adaptive.quantile, adaptive.multiple, adaptive.ema, adaptive.min_delta,
                                          adaptive.max_delta) if adaptive.enabled else None

    # ----------------------------------------------------------------------------- one RL step
    def train_step(self) -> dict[str, float]:
        cfg = self.config
        examples = self.next_examples()

        start = time.perf_counter()
        batch = self.behavior.generate(
            [self.policy.encode_prompt(ex) for ex in examples], group_size=cfg.rollout.group_size,
            max_new_tokens=self.task.max_response_len, temperature=cfg.rollout.temperature,
            top_p=cfg.rollout.top_p, top_k_logprobs=self.top_k_logprobs, generator=self.sampler,
            eos_id=self.policy.tokenizer.eos_id, pad_id=self.policy.tokenizer.pad_id,
            ignore_eos=cfg.rollout.ignore_eos, stop=self.policy.stopper())
        rollout_s = time.perf_counter() - start

        completions = self.policy.decode_responses(batch)
        completion_ids = [ids[:int(n)] for ids, n in zip(batch.response_ids.tolist(), batch.response_mask.sum(-1),
                                                         strict=True)]
        scores = self.task.score(completions, [examples[int(g)] for g in batch.group_index], completion_ids)
        rewards = torch.tensor(scores.rewards, device=self.device)  # [N] NaN: no reward applies (advantage 0)
        verifier_errors = self.task.verifier_errors(len(rewards))  # raises when most rewards failed
        advantages = group_advantages(rewards, batch.group_index, cfg.advantage.estimator,
                                      cfg.advantage.std_normalize)  # [N]

        start = time.perf_counter()
        old_log_prob = None
        metrics: dict[str, float] = {}
        if self.delta_tracker is not None:  # this step's boundary, from the mismatch of the steps before it
            self.loss = self.delta_tracker.apply(self.loss)
            metrics["loss/delta"] = boundary(self.loss)
        # With one update per batch that the loss does not anchor on pi_old, the update's own forward runs on the
        # weights that would be recomputed: pi_old comes from it for free instead of from a separate forward.
        pi_old_from_update = (cfg.recompute_old_log_prob and cfg.updates_per_batch == 1
                              and self.loss.hyper.anchor != "recompute")
        if not pi_old_from_update and (cfg.recompute_old_log_prob or self.loss.hyper.anchor == "recompute"):
            with torch.no_grad(), self.trainer_numerics():
                old_log_prob = self.policy.log_probs(batch, cfg.rollout.temperature).log_prob  # [N, T] pi_old

        minibatches = list(self.minibatches(batch))
        updates = [self.update(mb, advantages[rows], None if old_log_prob is None else old_log_prob[rows],
                               diagnose=cfg.diagnose_pull and i == 0)  # one update per step: 2 extra backwards
                   for i, (rows, mb) in enumerate(minibatches)]
        update_s = time.perf_counter() - start
        if pi_old_from_update:
            (rows, _), = minibatches
            old_log_prob = torch.empty_like(batch.rollout_log_prob)  # [N, T]
            old_log_prob[rows] = updates[0].log_prob  # back from the mini-batch's shuffled row order
        if old_log_prob is not None:
            if self.delta_tracker is not None:
                self.delta_tracker.observe(old_log_prob, batch.rollout_log_prob, batch.response_mask)
            metrics.update(mismatch_metrics(old_log_prob, batch.rollout_log_prob, batch.response_mask))
            metrics.update(step_metrics(old_log_prob, batch.rollout_log_prob, batch.response_mask))  # the tail
        if self.log_prob_dump is not None:  # mu, pi_old and each mini-batch's pi, before the weights move on
            self.log_prob_dump.write_step(self.step + 1, max(0, self.step - cfg.rollout.lag), batch, advantages,
                                          old_log_prob, [(rows, u.log_prob) for (rows, _), u in
                                                         zip(minibatches, updates, strict=True)])
        self.behavior.sync(self.model)

        tokens = float(batch.response_mask.sum())
        metrics.update(mean_of([u.metrics for u in updates]))
        scored = rewards[~rewards.isnan()]
        metrics.update(scores.metrics)
        metrics.update({
            "reward/mean": scored.mean().item() if len(scored) else math.nan,
            "reward/std": scored.std().item() if len(scored) > 1 else 0.0,
            "reward/verifier_errors": float(verifier_errors),
            "response_length/mean": batch.response_mask.sum(-1).float().mean().item(),
            "updates/skipped": float(sum(u.skipped for u in updates)),
            "lr": self.scheduler.get_last_lr()[0],
            "time/rollout_s": rollout_s,
            "time/update_s": update_s,
            "throughput/tokens_per_s": tokens / max(rollout_s + update_s, 1e-9),
        })
        return metrics

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

    def next_examples(self) -> list:
        train = self.task.train
        picks = self.prompt_rng.choice(len(train), size=self.config.rollout.prompts,
                                       replace=len(train) < self.config.rollout.prompts)
        return [train[int(i)] for i in picks]

    def minibatches(self, batch: RolloutBatch):
        """Exactly updates_per_batch disjoint mini-batches of whole rows, in a seeded random order.

        Their sizes differ by at most one row (tensor_split; torch.chunk would cut 6 rows into 3 pieces of 2
        for 4 updates, while the learning-rate schedule counts steps x updates_per_batch).
        """
        count = self.config.updates_per_batch
        if len(batch) < count:
            raise ValueError(f"updates_per_batch={count} mini-batches cannot be cut from {len(batch)} responses")
        order = torch.randperm(len(batch), generator=self.sampler, device=self.device)
        for rows in order.tensor_split(count):
            yield rows, batch.select(rows)

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy on held-out prompts, and mean accuracy of k samples at the rollout temperature."""
        cfg = self.config.eval
        examples = self.task.eval[: cfg.prompts]
        greedy_acc = self.policy.greedy_accuracy(examples)
        if cfg.samples == 0:
            return {"eval/accuracy": greedy_acc, "eval/prompts": len(examples)}
        prompts = [self.policy.encode_prompt(ex) for ex in examples]
        generator = torch.Generator(self.device).manual_seed(self.config.seed + 10**6 + self.step)  # not training's
        sampled = self.policy.generate_text(prompts, cfg.samples, self.task.max_response_len,
                                            self.config.rollout.temperature, generator)
        sampled_acc = float(np.nanmean(self.task.score(sampled, [examples[i // cfg.samples]
                                                                 for i in range(len(sampled))]).rewards))
        self.task.verifier_errors(len(sampled))  # raises when most failed; a few count as wrong answers here
        # the sampled accuracy is avg@k (mean over k samples per problem), as in AIME avg@16 reports
        return {"eval/accuracy": greedy_acc, "eval/sampled_accuracy": sampled_acc, f"eval/avg@{cfg.samples}": sampled_acc,
                "eval/prompts": len(examples)}  # fewer than eval.prompts when the eval split is smaller

    # ----------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "behavior": self.behavior.state_dict(),
            "sampler": self.sampler.get_state(), "prompt_rng": self.prompt_rng.bit_generator.state,
            **global_rng_state(),  # torch, Python, NumPy: plain values, so the checkpoint loads weights_only
            "bad_steps": self.bad_steps, "start_accuracy": self.start_accuracy, "best_accuracy": self.best_accuracy,
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
        if self.delta_tracker is not None:
            self.delta_tracker.load_state_dict(state["delta_tracker"])

    def checkpoint(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints", self.state())

    @contextmanager
    def _stop_requests(self):
        """Ctrl-C or SIGTERM ends the run after the current step, so the checkpoint is always of a whole step.

        A second Ctrl-C stops at once (without a new checkpoint: the last periodic one stays valid).
        """

        def request_stop(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True

        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # ----------------------------------------------------------------------------- the loop
    def train(self, console=None) -> dict:
        """Run until config.steps, evaluating, logging and checkpointing; returns summary.json's content."""
        from drpo.summary import write_summary

        cfg = self.config
        resume_step = None
        check_out(cfg)
        if cfg.resume:  # before config.yaml is written: a refused resume leaves the run directory as it was
            state = load_checkpoint(Path(cfg.resume) / "checkpoints")
            check_resume(state["config"], cfg)
            self.load_state(state)
            resume_step = self.step
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        logger = MetricsLogger(self.run_dir, cfg.report_to, resume_step, config=cfg.recorded())
        if cfg.dump_log_probs:
            self.log_prob_dump = TrainerDump(self.run_dir, f"drpo {cfg.rollout.precision} rollout, lag "
                                             f"{cfg.rollout.lag}", resume_step)
        started = time.perf_counter()
        try:
            with _progress(console) as progress, self._stop_requests():
                task = progress.add_task("RL", total=cfg.steps, completed=self.step, status="")
                if self.step == 0:
                    first = {"step": 0, **self.evaluate()}
                    self.start_accuracy = self.best_accuracy = first["eval/accuracy"]
                    logger.log(first)
                while self.step < cfg.steps and not self.stop_requested:
                    metrics = self.train_step()
                    self.step += 1
                    if cfg.eval.due(self.step, cfg.steps):
                        metrics.update(self.evaluate())
                        self.best_accuracy = max(self.best_accuracy, metrics["eval/accuracy"])
                    logger.log({"step": self.step, **metrics})
                    progress.update(task, completed=self.step, status=_status(metrics, self.best_accuracy))
                    if console is not None and not console.is_terminal and "eval/accuracy" in metrics:
                        console.print(f"step {self.step}/{cfg.steps}  {_status(metrics, self.best_accuracy)}")
                    if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self.checkpoint()
        finally:
            logger.close()
        interrupted = self.stop_requested and self.step < cfg.steps
        path = self.checkpoint()
        if interrupted:
            print(f"interrupted at step {self.step}: checkpoint {path}; continue with "
                  f"`drpo train resume={self.run_dir}`")
        return write_summary(self, time.perf_counter() - started, interrupted)


def lr_lambda(config: RunConfig, total_updates: int):
    warmup, schedule = config.optim.warmup_steps, config.optim.schedule

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            progress = (update - warmup) / max(1, total_updates - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _status(metrics: dict, best: float | None) -> str:
    parts = [f"reward {metrics['reward/mean']:.3f}"]
    if "eval/accuracy" in metrics:
        parts.append(f"eval {metrics['eval/accuracy']:.3f}")
    if best is not None:
        parts.append(f"best {best:.3f}")
    if "mismatch/abs_mean" in metrics:
        parts.append(f"|pi-mu| {metrics['mismatch/abs_mean']:.2e}")
    parts.append(f"{metrics['throughput/tokens_per_s']:.0f} tok/s")
    return "  ".join(parts)


@contextmanager
def _progress(console):
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=False)
    with progress:
        yield progress


