"""The behavior policy and the sampler: mu is exactly what was sampled from, mismatch is real and ordered."""

import pytest
import torch
from torch import nn

from drpo.models import CharTokenizer, build_model
from drpo.rollout import PRECISIONS, BehaviorPolicy, generate, sampling_log_probs, sequence_log_probs

TOK = CharTokenizer()
IDS = dict(eos_id=TOK.eos_id, pad_id=TOK.pad_id)
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
    batch = BehaviorPolicy(policy).generate(PROMPTS, 4, 10, temperature=0.7, generator=seeded(), **IDS)
    recomputed = sequence_log_probs(policy, batch, temperature=0.7)
    torch.testing.assert_close(recomputed.log_prob, batch.rollout_log_prob, atol=1e-5, rtol=0)
    assert mean_abs_mismatch(policy, batch, temperature=0.7) < 1e-6


def test_low_precision_mismatch_is_real_and_ordered():
    policy = make_policy()
    mismatch = {}
    for precision in ("bf16", "fp8", "int8", "fp8_all"):
        batch = BehaviorPolicy(policy, precision).generate(PROMPTS, 4, 10, generator=seeded(), **IDS)
        mismatch[precision] = mean_abs_mismatch(policy, batch)
    assert 0 < mismatch["bf16"] < mismatch["fp8"] < mismatch["fp8_all"]
    assert mismatch["int8"] > mismatch["bf16"]


def test_bf16_copy_computes_in_bf16_and_fp8_rounds_weights():
    policy = make_policy()
    assert next(BehaviorPolicy(policy, "bf16").model.parameters()).dtype == torch.bfloat16
    fp8 = BehaviorPolicy(policy, "fp8").model
    weight, original = fp8.blocks[0].attn.qkv.weight, policy.blocks[0].attn.qkv.weight
    assert weight.dtype == torch.bfloat16 and not torch.equal(weight.float(), original.bfloat16().float())
    torch.testing.assert_close(weight.float(), original, atol=0.1 * original.abs().max().item(), rtol=0.07)
    # engines keep the (tied) embedding and output head in bf16: exactly the bf16 copy's, not on the e4m3 grid
    torch.testing.assert_close(fp8.wte.weight, policy.wte.weight.bfloat16(), atol=0, rtol=0)


def test_fp8_all_rounds_every_linear_in_fp32_including_the_tied_head():
    policy = make_policy()
    fp8_all = BehaviorPolicy(policy, "fp8_all").model
    head = fp8_all.lm_head.weight
    assert head.dtype == torch.float32 and head is fp8_all.wte.weight
    scale = policy.lm_head.weight.abs().max() / 448
    on_grid = (head / scale).to(torch.float8_e4m3fn).float() * scale
    torch.testing.assert_close(head, on_grid, atol=1e-6, rtol=1e-6)
    assert not torch.equal(head, policy.lm_head.weight)


def test_unknown_precision_lists_valid_ones():
    with pytest.raises(ValueError, match=", ".join(PRECISIONS)):
        BehaviorPolicy(make_policy(), "fp4")


def _perturb(policy: nn.Module, version: float) -> None:
    with torch.no_grad():
        policy.norm.weight.fill_(version)  # marks the weights with the step that produced them


def test_lag_serves_weights_from_k_syncs_ago():
    policy = make_policy()
    _perturb(policy, 0.0)
    behavior = BehaviorPolicy(policy, lag=2)
    served = []
    for version in (1.0, 2.0, 3.0, 4.0):
        _perturb(policy, version)
        behavior.sync(policy)
        served.append(behavior.model.norm.weight[0].item())
    assert served == [0.0, 0.0, 1.0, 2.0]


def test_state_dict_round_trip_resumes_the_lag_queue():
    policy = make_policy()
    behavior = BehaviorPolicy(policy, "bf16", lag=2)
    for version in (1.0, 2.0):
        _perturb(policy, version)
        behavior.sync(policy)
    resumed = BehaviorPolicy(make_policy(seed=1), "bf16", lag=2)
    resumed.load_state_dict(behavior.state_dict())
    for version in (3.0, 4.0):
        _perturb(policy, version)
        behavior.sync(policy)
        resumed.sync(policy)
        for a, b in zip(behavior.model.parameters(), resumed.model.parameters(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="lag=2"):
        BehaviorPolicy(policy, "bf16", lag=1).load_state_dict(behavior.state_dict())


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_cache_and_no_cache_sample_the_same_tokens(moe):
    behavior = BehaviorPolicy(make_policy(moe))
    kwargs = dict(temperature=1.3, top_p=0.9, top_k_logprobs=3, **IDS)
    cached = behavior.generate(PROMPTS, 3, 12, generator=seeded(5), **kwargs)
    recomputed = behavior.generate(PROMPTS, 3, 12, use_cache=False, generator=seeded(5), **kwargs)
    assert torch.equal(cached.response_ids, recomputed.response_ids)
    torch.testing.assert_close(cached.rollout_log_prob, recomputed.rollout_log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached.rollout_topk_log_probs, recomputed.rollout_topk_log_probs, atol=1e-5, rtol=0)


def test_seeded_generation_is_deterministic():
    behavior = BehaviorPolicy(make_policy(), "fp8")
    first = behavior.generate(PROMPTS, 2, 8, generator=seeded(3), **IDS)
    second = behavior.generate(PROMPTS, 2, 8, generator=seeded(3), **IDS)
    assert torch.equal(first.response_ids, second.response_ids)
    assert torch.equal(first.rollout_log_prob, second.rollout_log_prob)


def test_batch_layout():
    batch = BehaviorPolicy(make_policy()).generate(PROMPTS, 3, 9, top_k_logprobs=4, generator=seeded(), **IDS)
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
    batch = BehaviorPolicy(make_policy()).generate(PROMPTS, 8, 16, temperature=2.0, generator=seeded(), **IDS)
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
    greedy = BehaviorPolicy(make_policy()).generate(PROMPTS, 2, 6, top_p=1e-9, generator=seeded(), **IDS)
    assert (greedy.rollout_log_prob == 0).all()  # the nucleus holds one token: probability 1
    assert torch.equal(greedy.response_ids[0::2], greedy.response_ids[1::2])


def test_sequence_log_probs_gradients_and_entropy():
    policy = make_policy(moe=True)
    batch = BehaviorPolicy(policy).generate(PROMPTS, 2, 6, generator=seeded(), **IDS)
    out = sequence_log_probs(policy, batch)
    assert out.logits.shape == (*batch.response_ids.shape, TOK.vocab_size)
    assert ((out.entropy >= 0) & (out.entropy <= torch.log(torch.tensor(TOK.vocab_size)) + 1e-5)).all()
    (out.log_prob.sum() + policy.aux_loss).backward()
    assert all(p.grad is not None for p in policy.parameters())
