"""The trainer end to end on tiny settings: it learns, resumes exactly, repeats itself, guards NaN."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from configs import CHEAP

from drpo import trainer as trainer_module
from drpo.backends import build_policy
from drpo.cli import main
from drpo.config import ConfigError, load_config
from drpo.losses import DRPO_DELTA
from drpo.metrics import TIMING_PREFIXES, read_metrics
from drpo.models import policy as policy_module
from drpo.tasks import Arith
from drpo.trainer import NonFiniteError, Trainer, in_batch_order, minibatches

# the default base model (small, 2-digit addition, ~30 s of warm-up to 30% accuracy, cached for the session, see
# conftest.py) with small batches: not configs.CHEAP, since the run that must learn needs a competent model.
# Every key of TINY is also in CHEAP, so run(tmp_path, *CHEAP, ...) runs CHEAP's settings.
TINY = ["rollout.prompts=8", "rollout.group_size=4", "eval.prompts=32", "eval.samples=2", "eval.every=4",
        "tensorboard=false"]


@pytest.fixture
def parity_reward(monkeypatch):
    """arith rewarded by the parity of the response's length, which a model without warm-up earns about half the
    time (the sum, almost never): real advantages, so the updates move the weights and the optimizer's state."""
    monkeypatch.setattr(Arith, "reward", lambda self, completion, example: float(len(completion) % 2))


def run(tmp_path, *overrides, name="run"):
    config = load_config(None, [*TINY, f"out={tmp_path / name}", *overrides])
    summary = Trainer(config).train()
    return summary, read_metrics(tmp_path / name)


def comparable(records):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in records]


# slow: 24 steps, after the warm-up of the default base model (minutes on 2 cores)
@pytest.mark.slow
def test_short_run_learns_and_writes_the_run_directory(tmp_path):
    # on-policy (the default run is off-policy): fp32 rollouts, one update per batch
    summary, records = run(tmp_path, "steps=24", "rollout.prompts=16", "rollout.group_size=8",
                           "rollout.precision=fp32", "updates_per_batch=1")
    rewards = [r["reward/mean"] for r in records if "reward/mean" in r]
    assert sum(rewards[-6:]) / 6 > sum(rewards[:6]) / 6, rewards
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "plots/curves.png", "checkpoints/latest.pt"):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 24
    keys = set().union(*records[1:])
    for key in ("step", "reward/mean", "reward/verifier_errors", "eval/accuracy", "mismatch/abs_mean", "mismatch/max", "mismatch/min",
                "mismatch/kl", "loss/weight_mean", "loss/corrective_frac", "loss/masked_frac", "ratio/max",
                "entropy", "response_length/mean", "grad_norm", "time/rollout_s", "time/update_s",
                "throughput/tokens_per_s"):
        assert key in keys, key
    assert records[1]["mismatch/abs_mean"] < 1e-5  # fp32 rollout: mu is what the trainer recomputes


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, parity_reward):
    _, first = run(tmp_path, *CHEAP, "steps=4", "updates_per_batch=2", name="a")
    _, second = run(tmp_path, *CHEAP, "steps=4", "updates_per_batch=2", name="b")
    assert comparable(first) == comparable(second)
    assert all(r["grad_norm"] > 0 for r in first[1:])  # every step updated the weights: no trivial equality


@pytest.mark.slow
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, parity_reward):
    args = (*CHEAP, "steps=6", "rollout.lag=1", "updates_per_batch=2", "checkpoint_every=2", "rollout.precision=bf16")
    _, full = run(tmp_path, *args, name="full")

    trainer = Trainer(load_config(None, [*TINY, f"out={tmp_path / 'part'}", *args]))
    step_once = trainer.train_step

    def ctrl_c_during_step_three():
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # lands mid-step: the run stops after the step, whole
        return step_once()

    trainer.train_step = ctrl_c_during_step_three
    assert trainer.train()["interrupted"]
    resumed = load_config(None, [*TINY, f"out={tmp_path / 'part'}", *args, f"resume={tmp_path / 'part'}"])
    Trainer(resumed).train()
    assert comparable(read_metrics(tmp_path / "part")) == comparable(full)
    assert all(r["grad_norm"] > 0 for r in full[1:])  # every step updated the weights


def test_non_finite_loss_skips_the_update_and_stops(tmp_path, monkeypatch):
    config = load_config(None, [*CHEAP, f"out={tmp_path / 'nan'}", "steps=5", "max_bad_steps=2",
                                "updates_per_batch=1"])
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    monkeypatch.setattr(trainer_module, "aggregate", lambda *args, **kwargs: torch.tensor(float("nan")))
    metrics = trainer.train_step()
    assert metrics["updates/skipped"] == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    with pytest.raises(NonFiniteError, match="2 updates in a row"):
        trainer.train_step()


def test_a_run_stopped_on_non_finite_losses_writes_a_summary_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "aggregate", lambda *args, **kwargs: torch.tensor(float("nan")))
    config = load_config(None, [*CHEAP, f"out={tmp_path}", "steps=5", "max_bad_steps=2", "updates_per_batch=1"])
    with pytest.raises(NonFiniteError):
        Trainer(config).train()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"].startswith("non-finite loss: 2 updates in a row") and not summary["interrupted"]
    assert summary["steps"] == 1 and summary["steps_planned"] == 5  # step 2 raised: not logged, not counted
    assert summary["eval/accuracy_start"] == read_metrics(tmp_path)[0]["eval/accuracy"]


def test_cli_train_and_config_error(tmp_path, capsys):
    assert main(["train", *CHEAP, "steps=2", f"out={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli" / "summary.json").exists()
    assert main(["train", "rollout.precision=fp4"]) == 2
    assert "'rollout.precision' got 'fp4'" in capsys.readouterr().err


def test_warm_up_stops_at_the_first_check_that_reaches_the_target(monkeypatch):
    probe = iter([0.1, 0.2, 0.4, 0.9])
    monkeypatch.setattr(policy_module.Policy, "greedy_accuracy", lambda self, examples: next(probe))
    config = load_config(None, ["model=tiny", "warmup.steps=100", "warmup.check_every=5", "warmup.target_accuracy=0.3"])
    info = build_policy(config).base_info
    assert (info["warmup_steps"], info["warmup_probe_accuracy"]) == (15, 0.4)
    assert next(probe) == 0.9  # no check after the stop


def test_warm_up_without_a_target_runs_every_step(monkeypatch):
    def never(self, examples):
        raise AssertionError("no accuracy check without a target")

    monkeypatch.setattr(policy_module.Policy, "greedy_accuracy", never)
    config = load_config(None, ["model=tiny", "warmup.steps=12", "warmup.target_accuracy=null"])
    assert build_policy(config).base_info["warmup_steps"] == 12


# slow: the default base model's warm-up, unless the run above cached it
@pytest.mark.slow
def test_default_base_model_is_right_sometimes_far_from_always():
    policy = build_policy(load_config(None, []))  # the session's cached default base model
    assert 0.3 <= policy.base_info["warmup_probe_accuracy"] <= 0.7
    assert 0.15 <= policy.greedy_accuracy(policy.task.eval[:256]) <= 0.6  # held out, the band


def test_minibatches_are_exactly_updates_per_batch():
    """6 rows into 4 updates: torch.chunk gave 3 pieces of 2, the schedule counts 4 optimizer steps."""
    from drpo.models.sampling import make_batch

    batch = make_batch([[1, 2]] * 6, [[3]] * 6, pad_id=0)
    pieces = minibatches(batch, 4, torch.Generator().manual_seed(0))
    assert len(pieces) == 4 and sorted(len(rows) for rows, _ in pieces) == [1, 1, 2, 2]
    assert sorted(torch.cat([rows for rows, _ in pieces]).tolist()) == list(range(6))
    for rows, piece in pieces:  # each mini-batch holds its rows of the batch
        assert torch.equal(piece.response_ids, batch.response_ids[rows])
    again = minibatches(batch, 4, torch.Generator().manual_seed(0))
    assert [rows.tolist() for rows, _ in again] == [rows.tolist() for rows, _ in pieces]  # the generator's order
    with pytest.raises(ValueError, match="7 mini-batches cannot be cut from 6 responses"):
        minibatches(batch, 7, torch.Generator())
    with pytest.raises(ConfigError, match=r"updates_per_batch=8 mini-batches cannot be cut from 6 .* 3 x 2"):
        load_config(None, ["rollout.prompts=3", "rollout.group_size=2", "updates_per_batch=8"])


def test_in_batch_order_puts_each_mini_batch_row_back():
    like = torch.zeros(4, 2)
    parts = [(torch.tensor([2, 0]), torch.tensor([[2.0, 2.5], [0.0, 0.5]])), (torch.tensor([3]), torch.tensor([[3.0, 3.5]]))]
    assert in_batch_order(like, parts).tolist() == [[0.0, 0.5], [0.0, 0.0], [2.0, 2.5], [3.0, 3.5]]  # row 1: no part


@pytest.mark.parametrize("updates_per_batch", [1, 2])
def test_mismatch_metrics_measure_pi_old_against_mu_with_or_without_a_separate_recompute(tmp_path, updates_per_batch):
    # with one update per batch pi_old is taken from the update's own forward (no extra forward pass); with
    # more it is recomputed: either way mismatch/* must equal the statistics of the pre-update policy against mu
    import copy

    from drpo.mismatch.stats import step_metrics
    from drpo.models.log_probs import sequence_log_probs

    config = load_config(None, [*CHEAP, f"out={tmp_path}", "rollout.precision=bf16",
                                f"updates_per_batch={updates_per_batch}"])
    trainer = Trainer(config)
    before = copy.deepcopy(trainer.model)
    batches, calls = [], []
    generate, log_probs = trainer.behavior.generate, trainer.policy.log_probs
    trainer.behavior.generate = lambda *a, **k: batches.append(generate(*a, **k)) or batches[-1]
    trainer.policy.log_probs = lambda *a, **k: calls.append(torch.is_grad_enabled()) or log_probs(*a, **k)
    metrics = trainer.train_step()
    assert calls == [False] * (updates_per_batch > 1) + [True] * updates_per_batch
    (batch,) = batches
    with torch.no_grad():
        pi_old = sequence_log_probs(before, batch).log_prob
    expected = step_metrics(pi_old, batch.rollout_log_prob, batch.response_mask)
    assert expected["mismatch/abs_mean"] > 0
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path):
    run_dir = tmp_path / "r"
    Trainer(load_config(None, [*CHEAP, f"out={run_dir}", "steps=1"])).train()
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == 1  # no pickled code
    written = (run_dir / "config.yaml").read_text()
    changed = load_config(None, [*CHEAP, f"out={run_dir}", "steps=2", f"resume={run_dir}", "optim.lr=0.002",
                                 "loss.delta=0.15"])
    with pytest.raises(ConfigError, match=rf"only steps .* and out.*loss.delta: {DRPO_DELTA} -> 0.15; optim.lr: 0.0001 -> 0.002"):
        Trainer(changed).train()
    assert (run_dir / "config.yaml").read_text() == written  # a refused resume leaves the run as it was
    extended = load_config(None, [*CHEAP, f"out={tmp_path / 'r2'}", "steps=2", f"resume={run_dir}"])
    assert Trainer(extended).train()["steps"] == 2  # steps and out may change


@pytest.mark.slow
def test_cli_resume_into_a_new_directory_continues_there_and_leaves_the_old_run(tmp_path):
    """`drpo train resume=OLD out=NEW steps=N`: NEW holds the whole run (OLD's steps, then the new ones, the same
    numbers as one uninterrupted run), OLD is left exactly as it was."""
    from drpo.cli import main

    common = [*CHEAP, "eval.every=1", "dump_log_probs=true", "tensorboard=true"]
    old, new, straight = tmp_path / "old", tmp_path / "new", tmp_path / "straight"
    assert main(["train", *common, f"out={old}", "steps=2"]) == 0
    before = {path.relative_to(old): path.read_bytes() for path in old.rglob("*") if path.is_file()}
    assert main(["train", f"resume={old}", f"out={new}", "steps=3"]) == 0
    assert {path.relative_to(old): path.read_bytes() for path in old.rglob("*") if path.is_file()} == before
    assert main(["train", *common, f"out={straight}", "steps=3"]) == 0
    assert [r["step"] for r in read_metrics(new)] == [0, 1, 2, 3]
    assert comparable(read_metrics(new)) == comparable(read_metrics(straight))
    dumped = [json.loads(line)["step"] for line in (new / "log_probs.jsonl").read_text().splitlines()]
    assert sorted(set(dumped)) == [1, 2, 3]
    assert json.loads((new / "summary.json").read_text())["steps"] == 3
    assert list((new / "tb").iterdir())  # TensorBoard's events came along


@pytest.mark.parametrize("coef", [0.0, 0.05])
def test_moe_load_balancing_loss_is_part_of_the_rl_loss(tmp_path, monkeypatch, coef):
    """With the policy loss zeroed, an RL update moves the weights through the balancing term alone."""
    config = load_config(None, [*CHEAP, "model.moe=true", f"optim.moe_aux_coef={coef}", f"out={tmp_path}"])
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    monkeypatch.setattr(trainer_module, "aggregate", lambda per_token, *args, **kwargs: per_token.sum() * 0)
    metrics = trainer.train_step()
    assert metrics["loss/moe_aux"] >= 1.0  # Switch balancing loss: 1 when balanced, above otherwise
    assert metrics["loss/value"] == pytest.approx(coef * metrics["loss/moe_aux"])
    moved = [k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)]
    assert bool(moved) == (coef > 0), moved


def test_moe_aux_coef_applies_only_to_moe_models():
    with pytest.raises(ConfigError, match="moe_aux_coef .* model.moe=true"):
        load_config(None, ["optim.moe_aux_coef=0.1"])


def test_top_p_below_one_warns_and_the_gap_it_warns_of_is_real(tmp_path):
    """fp32 rollout, same weights: with the nucleus, mu = pi / Z on its tokens (Z < 1), so pi - mu <= 0 everywhere."""
    config = load_config(None, [*CHEAP, "rollout.top_p=0.7", "rollout.precision=fp32", f"out={tmp_path}"])
    with pytest.warns(UserWarning, match=r"rollout.top_p=0.7 < 1: .* pi < mu"):
        trainer = Trainer(config)
    metrics = trainer.train_step()
    assert metrics["mismatch/abs_mean"] > 1e-3 and metrics["mismatch/max"] < 1e-6


@pytest.mark.parametrize("loss", ["ppo_tis", "ppo_mis", "ppo_seq_tis", "ppo_seq_mis", "ppo_geo_mis", "minirl", "gspo"])
def test_framework_baselines_train_on_pi_old_and_mu(tmp_path, loss):
    """The decoupled losses need both pi_old (recomputed) and mu (the sampler's); a bf16 sampler makes them differ."""
    trainer = Trainer(load_config(None, [*CHEAP, f"out={tmp_path}", f"loss={loss}", "steps=2",
                                         "rollout.precision=bf16"]))
    original, seen = trainer.loss, []

    class Spy(type(original)):
        def __call__(self, **inputs):
            seen.append(inputs)
            return super().__call__(**inputs)

    trainer.loss = Spy(original.spec, original.hyper)
    summary = trainer.train()
    records = read_metrics(tmp_path)
    assert summary["steps"] == 2 and len(seen) == 2 * trainer.config.updates_per_batch
    assert all(torch.isfinite(torch.tensor(r["loss/value"])) for r in records if "loss/value" in r)
    for inputs in seen:
        gap = (inputs["old_log_prob"] - inputs["rollout_log_prob"]).abs() * inputs["response_mask"]
        assert gap.max() > 0, "pi_old must be the trainer's recompute, not mu"


@pytest.mark.slow
def test_resume_into_a_new_directory_carries_the_start_and_best_accuracy(tmp_path):
    run(tmp_path, *CHEAP, "steps=2", name="first")
    checkpoint = tmp_path / "first" / "checkpoints" / "latest.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["start_accuracy"], state["best_accuracy"] = 0.0123, 0.987  # values no evaluation of this model gives
    torch.save(state, checkpoint)
    summary, records = run(tmp_path, *CHEAP, "steps=3", f"resume={tmp_path / 'first'}", name="second")
    assert [r["step"] for r in records] == [0, 1, 2, 3]  # the first run's history came along
    assert summary["eval/accuracy_start"] == 0.0123
    assert summary["eval/accuracy_best"] == 0.987


def test_a_new_run_into_a_directory_holding_a_run_is_refused(tmp_path, capsys):
    run(tmp_path, *CHEAP, "steps=1", name="old")
    metrics = (tmp_path / "old" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"out=.*old already holds a run.*resume=.*old.*out=DIR"):
        run(tmp_path, *CHEAP, "steps=1", name="old")
    assert main(["train", *TINY, "steps=1", f"out={tmp_path / 'old'}"]) == 2  # refused before any model is built
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "old" / "metrics.jsonl").read_text() == metrics  # left as it was
