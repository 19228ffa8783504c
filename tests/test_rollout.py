"""The behavior policy and the sampler: mu is exactly what was sampled from, mismatch is real and ordered."""

import importlib
import inspect

import pytest
import torch
from torch import nn

from drpo.behavior import ENGINES, ROLLOUT_MODES, BehaviorPolicy, SamplingParams, modes_of
from drpo.behavior.native import NativeBehavior
from drpo.models import CharTokenizer, build_model, log_probs
from drpo.models.log_probs import entropy_of_logits, sequence_log_probs
from drpo.models.sampling import generate, left_pad, sample_categorical, sampling_log_probs
from drpo.models.transformer import KVCache

TOK = CharTokenizer()
IDS = dict(eos_id=TOK.eos_id, pad_id=TOK.pad_id)


def params(**sampling) -> SamplingParams:
    """How the behavior samples: the tokenizer's ids, and ``sampling`` (temperature, top_p, generator, ...)."""
    return SamplingParams(**IDS, **sampling)
PROMPTS = [TOK.encode(p, bos=True) for p in ("347+85=", "1+2=", "90+905=", "5,1,3>")]


def make_policy(moe: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("tiny", TOK.vocab_size, 32, moe=moe)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_abs_mismatch(policy, batch, temperature: float = 1.0) -> float:
    with torch.no_grad():
        pi = sequence_log_probs(policy, batch, temperature).log_prob.exp()
    mask = batch.response_mask
    return ((pi - batch.rollout_log_prob.exp()).abs() * mask).sum().item() / mask.sum().item()


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_fp32_mu_equals_trainer_recomputation(moe):
    policy = make_policy(moe)
    batch = NativeBehavior(policy).generate(PROMPTS, 4, 10, sampling=params(temperature=0.7, generator=seeded()))
    recomputed = sequence_log_probs(policy, batch, temperature=0.7)
    torch.testing.assert_close(recomputed.log_prob, batch.rollout_log_prob, atol=1e-5, rtol=0)
    assert mean_abs_mismatch(policy, batch, temperature=0.7) < 1e-6


def test_low_precision_mismatch_is_real_and_ordered():
    policy = make_policy()
    mismatch = {}
    for precision in ("bf16", "fp8", "int8", "fp8_all"):
        batch = NativeBehavior(policy, precision).generate(PROMPTS, 4, 10, sampling=params(generator=seeded()))
        mismatch[precision] = mean_abs_mismatch(policy, batch)
    assert 0 < mismatch["bf16"] < mismatch["fp8"] < mismatch["fp8_all"]
    assert mismatch["int8"] > mismatch["bf16"]


def test_bf16_copy_computes_in_bf16_and_fp8_rounds_weights():
    policy = make_policy()
    assert next(NativeBehavior(policy, "bf16").model.parameters()).dtype == torch.bfloat16
    fp8 = NativeBehavior(policy, "fp8").model
    weight, original = fp8.blocks[0].attn.qkv.weight, policy.blocks[0].attn.qkv.weight
    assert weight.dtype == torch.bfloat16 and not torch.equal(weight.float(), original.bfloat16().float())
    torch.testing.assert_close(weight.float(), original, atol=0.1 * original.abs().max().item(), rtol=0.07)
    # engines keep the (tied) embedding and output head in bf16: exactly the bf16 copy's, not on the e4m3 grid
    torch.testing.assert_close(fp8.wte.weight, policy.wte.weight.bfloat16(), atol=0, rtol=0)


def test_fp8_all_rounds_every_linear_in_fp32_including_the_tied_head():
    policy = make_policy()
    fp8_all = NativeBehavior(policy, "fp8_all").model
    head = fp8_all.lm_head.weight
    assert head.dtype == torch.float32 and head is fp8_all.wte.weight
    scale = policy.lm_head.weight.abs().max() / 448
    on_grid = (head / scale).to(torch.float8_e4m3fn).float() * scale
    torch.testing.assert_close(head, on_grid, atol=1e-6, rtol=1e-6)
    assert not torch.equal(head, policy.lm_head.weight)


def test_unknown_precision_lists_valid_ones():
    with pytest.raises(ValueError, match=", ".join(modes_of("native"))):
        NativeBehavior(make_policy(), "fp4")
    with pytest.raises(ValueError, match="'q8_0' is not run by the native engine"):
        NativeBehavior(make_policy(), "q8_0")  # a llama.cpp mode


def _perturb(policy: nn.Module, version: float) -> None:
    with torch.no_grad():
        policy.norm.weight.fill_(version)  # marks the weights with the step that produced them


def test_lag_serves_weights_from_k_syncs_ago():
    policy = make_policy()
    _perturb(policy, 0.0)
    behavior = NativeBehavior(policy, lag=2)
    served = []
    for version in (1.0, 2.0, 3.0, 4.0):
        _perturb(policy, version)
        behavior.sync(policy)
        served.append(behavior.model.norm.weight[0].item())
    assert served == [0.0, 0.0, 1.0, 2.0]


def test_state_dict_round_trip_resumes_the_lag_queue():
    policy = make_policy()
    behavior = NativeBehavior(policy, "bf16", lag=2)
    for version in (1.0, 2.0):
        _perturb(policy, version)
        behavior.sync(policy)
    resumed = NativeBehavior(make_policy(seed=1), "bf16", lag=2)
    resumed.load_state_dict(behavior.state_dict())
    for version in (3.0, 4.0):
        _perturb(policy, version)
        behavior.sync(policy)
        resumed.sync(policy)
        for a, b in zip(behavior.model.parameters(), resumed.model.parameters(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="lag=2"):
        NativeBehavior(policy, "bf16", lag=1).load_state_dict(behavior.state_dict())


def test_fp32_without_lag_samples_from_the_policy_itself_and_stores_nothing():
    policy = make_policy()
    behavior = NativeBehavior(policy)
    assert behavior.model is policy and behavior.state_dict()["states"] == []
    _perturb(policy, 2.0)
    assert behavior.model.norm.weight[0].item() == 2.0  # no sync needed: the weights are shared
    half = make_policy().bfloat16()  # a bf16 policy with bf16 rollouts: a copy would equal it
    assert NativeBehavior(half, "bf16").model is half and NativeBehavior(half, "fp8").model is not half
    assert next(half.parameters()).dtype == torch.bfloat16


def test_lag_zero_copy_follows_each_sync_and_resumes_from_the_policy():
    policy = make_policy()
    behavior = NativeBehavior(policy, "bf16")
    assert behavior.model is not policy and behavior.state_dict()["states"] == []
    _perturb(policy, 3.0)
    assert behavior.model.norm.weight[0].item() != 3.0
    behavior.sync(policy)
    assert behavior.model.norm.weight[0].item() == 3.0
    resumed = NativeBehavior(policy, "bf16")
    _perturb(policy, 5.0)  # a resumed trainer restores the policy's weights before the behavior's state
    resumed.load_state_dict({"mode": "bf16", "lag": 0, "states": [dict(policy.state_dict())]})
    assert resumed.model.norm.weight[0].item() == 5.0


def test_a_checkpoint_saved_before_modes_naming_the_precision_still_loads():
    policy = make_policy()
    _perturb(policy, 1.0)
    behavior = NativeBehavior(policy, "bf16", lag=1)
    _perturb(policy, 2.0)
    old = {"precision": "bf16", "lag": 1, "states": behavior.state_dict()["states"]}  # drpo.rollout's state
    behavior.sync(policy)
    resumed = NativeBehavior(make_policy(seed=1), "bf16", lag=1)
    resumed.load_state_dict(old)
    assert resumed.model.norm.weight[0].item() == 1.0 and behavior.model.norm.weight[0].item() == 1.0
    with pytest.raises(ValueError, match="rollout.precision='bf16'.*rollout.precision='fp16'"):
        NativeBehavior(make_policy(), "fp16", lag=1).load_state_dict(old)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_a_prefill_repeated_per_row_continues_like_a_prefill_of_the_repeated_prompts(moe):
    policy = make_policy(moe)
    ids, mask = left_pad(PROMPTS, TOK.pad_id)  # [4, P]
    shared, own = KVCache(), KVCache()
    with torch.no_grad():
        policy(ids, mask, shared, logits_to_keep=1)
        shared.repeat_rows(3)
        policy(ids.repeat_interleave(3, dim=0), mask.repeat_interleave(3, dim=0), own, logits_to_keep=1)
        step = torch.randint(3, TOK.vocab_size, (12, 1), generator=seeded())
        continued, _ = policy(step, None, shared)
        reference, _ = policy(step, None, own)
    torch.testing.assert_close(continued, reference, atol=1e-5, rtol=0)
    assert torch.equal(shared.n_real, own.n_real) and torch.equal(shared.key_mask, own.key_mask)


def test_ignore_eos_samples_every_row_to_the_limit():
    greedy_first = generate(make_policy(), PROMPTS, 2, 1, temperature=0, **IDS).response_ids[0, 0].item()
    ids = dict(eos_id=greedy_first, pad_id=TOK.pad_id)  # the greedy first token of row 0 plays EOS
    stopped = generate(make_policy(), PROMPTS, 2, 9, temperature=0, **ids)
    assert stopped.response_mask[0].sum() == 1
    ignored = generate(make_policy(), PROMPTS, 2, 9, temperature=0, ignore_eos=True, **ids)
    assert ignored.response_ids.shape == (8, 9) and (ignored.response_mask == 1).all()


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_cache_and_no_cache_sample_the_same_tokens(moe):
    behavior = NativeBehavior(make_policy(moe))
    kwargs = dict(temperature=1.3, top_p=0.9, top_k_logprobs=3)
    cached = behavior.generate(PROMPTS, 3, 12, sampling=params(generator=seeded(5), **kwargs))
    recomputed = generate(behavior.model, PROMPTS, 3, 12, use_cache=False, generator=seeded(5), **kwargs, **IDS)
    assert torch.equal(cached.response_ids, recomputed.response_ids)
    torch.testing.assert_close(cached.rollout_log_prob, recomputed.rollout_log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.rollout_topk_log_probs, recomputed.rollout_topk_log_probs, atol=1e-5, rtol=0)


def test_seeded_generation_is_deterministic():
    behavior = NativeBehavior(make_policy(), "fp8")
    first = behavior.generate(PROMPTS, 2, 8, sampling=params(generator=seeded(3)))
    second = behavior.generate(PROMPTS, 2, 8, sampling=params(generator=seeded(3)))
    assert torch.equal(first.response_ids, second.response_ids)
    assert torch.equal(first.rollout_log_prob, second.rollout_log_prob)


def test_batch_layout():
    batch = NativeBehavior(make_policy()).generate(PROMPTS, 3, 9, sampling=params(top_k_logprobs=4, generator=seeded()))
    N, P = len(PROMPTS) * 3, max(len(p) for p in PROMPTS)
    assert batch.prompt_ids.shape == (N, P) and len(batch) == N
    assert batch.group_index.tolist() == [i for i in range(len(PROMPTS)) for _ in range(3)]
    for row in range(N):
        prompt = PROMPTS[row // 3]
        assert batch.prompt_ids[row, P - len(prompt):].tolist() == prompt
        assert batch.prompt_mask[row].sum().item() == len(prompt)
    T = batch.response_ids.shape[1]
    assert batch.input_ids().shape == batch.attention_mask().shape == (N, P + T)
    assert batch.rollout_topk_ids.shape == batch.rollout_topk_log_probs.shape == (N, T, 4)
    assert batch.response_mask.dtype == batch.rollout_log_prob.dtype == torch.float32
    mask = batch.response_mask.bool()
    assert (batch.rollout_log_prob[mask] < 0).all() and (batch.rollout_log_prob[~mask] == 0).all()
    topk = batch.rollout_topk_log_probs[mask]  # [n, K], sorted, containing the sampled token when it is top-k
    assert (topk[:, :-1] >= topk[:, 1:]).all() and torch.isfinite(topk).all()
    in_topk = batch.rollout_topk_ids == batch.response_ids[..., None]  # [N, T, K]
    torch.testing.assert_close((batch.rollout_topk_log_probs * in_topk).sum(-1)[in_topk.any(-1) & mask],
                               batch.rollout_log_prob[in_topk.any(-1) & mask])
    half = batch.select(slice(0, N // 2))
    assert len(half) == N // 2 and torch.equal(half.response_ids, batch.response_ids[: N // 2])


def test_eos_ends_rows_and_is_part_of_the_response():
    batch = NativeBehavior(make_policy()).generate(PROMPTS, 8, 16, sampling=params(temperature=2.0, generator=seeded()))
    ended = 0
    for ids, mask in zip(batch.response_ids.tolist(), batch.response_mask.tolist(), strict=True):
        length = int(sum(mask))
        assert mask == [1.0] * length + [0.0] * (len(mask) - length)
        assert all(token == TOK.pad_id for token in ids[length:])
        assert TOK.eos_id not in ids[: length - 1]  # only the last real token may be EOS
        ended += ids[length - 1] == TOK.eos_id
    assert 0 < ended < len(batch)  # some rows stopped on EOS, others ran to the limit


class AlwaysEos(nn.Module):
    """Logits that forbid EOS for the first two response tokens, then put all the mass on it."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, cache=None, logits_to_keep=0):
        logits = torch.zeros(input_ids.shape[0], logits_to_keep or input_ids.shape[1], TOK.vocab_size)
        logits[..., TOK.eos_id] = 100.0 if input_ids.shape[1] > len(PROMPTS[0]) + 1 else -100.0
        return logits, cache


def test_generation_stops_when_every_row_has_ended():
    batch = generate(AlwaysEos(), PROMPTS[:1], 4, 50, use_cache=False, generator=seeded(), **IDS)
    assert batch.response_ids.shape == (4, 3) and (batch.response_ids[:, -1] == TOK.eos_id).all()


def test_top_p_renormalises_the_sampled_distribution():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    log_p = sampling_log_probs(logits, temperature=1.0, top_p=0.8)
    assert torch.isinf(log_p[0, 2:]).all()
    torch.testing.assert_close(log_p[0, :2].exp(), torch.tensor([3.0, 2.0]).softmax(-1))
    greedy = NativeBehavior(make_policy()).generate(PROMPTS, 2, 6, sampling=params(top_p=1e-9, generator=seeded()))
    assert (greedy.rollout_log_prob == 0).all()  # the nucleus holds one token: probability 1
    assert torch.equal(greedy.response_ids[0::2], greedy.response_ids[1::2])


def test_sequence_log_probs_gradients_and_entropy():
    policy = make_policy(moe=True)
    batch = NativeBehavior(policy).generate(PROMPTS, 2, 6, sampling=params(generator=seeded()))
    out = sequence_log_probs(policy, batch)
    assert out.logits.shape == (*batch.response_ids.shape, TOK.vocab_size)
    assert ((out.entropy >= 0) & (out.entropy <= torch.log(torch.tensor(TOK.vocab_size)) + 1e-5)).all()
    (out.log_prob.sum() + policy.aux_loss).backward()
    assert all(p.grad is not None for p in policy.parameters())
    assert not out.entropy.requires_grad  # a metric: no graph over [N, T, V]


@pytest.mark.parametrize("chunk", [1 << 22, 7], ids=["one-chunk", "row-chunks"])
def test_log_probs_and_entropy_match_log_softmax_in_value_and_gradient(monkeypatch, chunk):
    monkeypatch.setattr(log_probs, "ENTROPY_CHUNK", chunk)
    policy = make_policy()
    batch = NativeBehavior(policy).generate(PROMPTS, 3, 8, sampling=params(temperature=1.5, generator=seeded(2)))
    out = sequence_log_probs(policy, batch, temperature=1.5)
    grads = torch.autograd.grad(out.log_prob.sum(), list(policy.parameters()))
    logits, _ = policy(batch.input_ids(), batch.attention_mask())
    log_pi = (logits[:, -batch.response_ids.shape[1] - 1:-1] / 1.5).log_softmax(-1)  # [N, T, V] the textbook way
    mask = batch.response_mask
    expected = log_pi.gather(-1, batch.response_ids[..., None])[..., 0] * mask
    torch.testing.assert_close(out.log_prob, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.entropy, -(log_pi.exp() * log_pi).sum(-1).detach() * mask, atol=1e-5, rtol=0)
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), list(policy.parameters())), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_entropy_of_known_distributions():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]]])  # uniform over 4; one certain token
    entropy = entropy_of_logits(logits, logits.logsumexp(-1))
    torch.testing.assert_close(entropy, torch.tensor([[torch.log(torch.tensor(4.0)).item(), 0.0]]))


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp8", torch.bfloat16),
                                              ("fp16", torch.float16), ("fp32", torch.float32)])
def test_the_lag_queue_is_stored_in_the_rollout_precision(precision, dtype):
    """The stale copies (in memory and in checkpoints) take the precision they are served in, and serve the same
    weights as the policy of lag syncs ago rounded once."""
    policy = make_policy()
    behavior = NativeBehavior(policy, precision, lag=2)
    old = {k: v.clone() for k, v in policy.state_dict().items()}
    for version in (1.0, 2.0):
        _perturb(policy, version)
        behavior.sync(policy)
    states = behavior.state_dict()["states"]
    assert len(states) == 3
    assert all(state["lm_head.weight"] is state["wte.weight"] for state in states)  # the tied weight stored once
    resumed = NativeBehavior(make_policy(seed=1), precision, lag=2)
    resumed.load_state_dict(behavior.state_dict())
    assert all(state["lm_head.weight"] is state["wte.weight"] for state in resumed.state_dict()["states"])
    assert {v.dtype for state in states for v in state.values() if v.is_floating_point()} == {dtype}
    if precision != "fp8":  # fp8 rounds the served Linear weights further
        for key, value in behavior.model.state_dict().items():
            assert torch.equal(value, old[key].to(value.dtype)), key


def test_inverse_cdf_sampling_draws_each_token_with_its_probability():
    """sample_categorical (the sampler's draw): frequencies of 40,000 draws within 0.01 of the probabilities
    (4 standard errors at most), and a token of probability 0 (outside the nucleus) never drawn."""
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0]]).repeat(20000, 1)  # [40000, 4]
    tokens = sample_categorical(probs, torch.Generator().manual_seed(0))
    first = torch.bincount(tokens[0::2], minlength=4) / 20000
    assert torch.allclose(first, probs[0], atol=0.01) and first[1] == 0
    assert (tokens[1::2] == 3).all()


# ------------------------------------------------------------------------------------------ the engines' contract
ENGINE_CLASSES = {"native": ("drpo.behavior.native", "NativeBehavior"), "vllm": ("drpo.behavior.vllm", "VLLMBehavior"),
                  "llamacpp": ("drpo.behavior.llamacpp", "LlamaCppBehavior")}
PROTOCOL_METHODS = ("generate", "sync", "describe", "state_dict", "load_state_dict")


def test_every_engine_has_a_class_and_every_mode_an_engine():
    assert tuple(ENGINE_CLASSES) == ENGINES
    assert all(set(mode.engines) <= set(ENGINES) and mode.engines for mode in ROLLOUT_MODES.values())
    assert set(ROLLOUT_MODES) == {name for engine in ENGINES for name in modes_of(engine)}


@pytest.mark.parametrize("precision", modes_of("native"))
def test_the_native_engine_is_a_behavior_policy_in_every_mode(precision):
    behavior = NativeBehavior(make_policy(), precision, lag=1)
    assert isinstance(behavior, BehaviorPolicy)
    assert (behavior.mode, behavior.lag) == (precision, 1)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_class_has_the_protocol_methods_with_its_signatures(engine):
    """The engines that cannot be built here (vLLM needs a GPU, llama.cpp its package) checked structurally."""
    module_name, class_name = ENGINE_CLASSES[engine]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # the engine's optional package (or its module) is not installed here
        pytest.skip(f"{module_name} does not import here: {error}")
    cls = getattr(module, class_name)
    assert cls.engine == engine
    for name in PROTOCOL_METHODS:
        wanted = inspect.signature(getattr(BehaviorPolicy, name)).parameters
        assert list(inspect.signature(getattr(cls, name)).parameters) == list(wanted), f"{class_name}.{name}"
    init = inspect.signature(cls).parameters
    assert {"mode", "lag"} <= set(init), f"{class_name}(...) takes mode and lag"


def test_describe_names_the_engine_mode_what_it_rounds_and_lag():
    described = NativeBehavior(make_policy(), "fp8", lag=2).describe()
    assert {k: described[k] for k in ("engine", "mode", "rounds", "lag")} == {
        "engine": "native", "mode": "fp8", "rounds": ROLLOUT_MODES["fp8"].rounds, "lag": 2}
    assert "float8_e4m3" in described["rounds"]


def test_sampling_params_reach_the_sampler_unchanged():
    """SamplingParams is the sampler's keywords: a native rollout equals drpo.models.sampling.generate on its model."""
    from drpo.models.sampling import StopStrings

    behavior = NativeBehavior(make_policy(), "bf16")
    stop = StopStrings(["1"], TOK.decode)
    sampling = params(temperature=1.3, top_p=0.9, top_k_logprobs=2, generator=seeded(7), stop=stop)
    batch = behavior.generate(PROMPTS, 2, 7, sampling=sampling)
    direct = generate(behavior.model, PROMPTS, 2, 7, temperature=1.3, top_p=0.9, top_k_logprobs=2,
                      generator=seeded(7), stop=stop, **IDS)
    assert torch.equal(batch.response_ids, direct.response_ids)
    assert torch.equal(batch.rollout_log_prob, direct.rollout_log_prob)
