"""The tokenizer and the transformer: KV cache and left padding are exact, sizes are as stated, MoE aux loss."""

import copy

import pytest
import torch

from drpo.models import SIZES, CharTokenizer, KVCache, build_model

TOK = CharTokenizer()


def test_tokenizer_round_trip_and_special_tokens():
    text = "347+85=432, 1<2>0 -*"
    ids = TOK.encode(text)
    assert TOK.decode(ids) == text
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id) == (0, 1, 2)
    assert TOK.encode("7", bos=True)[0] == TOK.bos_id
    assert max(ids) < TOK.vocab_size and min(ids) > TOK.eos_id
    assert TOK.decode([TOK.bos_id, *TOK.encode("12"), TOK.pad_id, TOK.eos_id, *TOK.encode("9")]) == "12"
    assert TOK.decode([*TOK.encode("12"), TOK.eos_id, *TOK.encode("9")], stop_at_eos=False) == "129"


def test_tokenizer_errors_name_the_problem():
    with pytest.raises(ValueError, match="'x'"):
        TOK.encode("12x")
    with pytest.raises(ValueError, match="'é'"):
        TOK.encode("é")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TOK.decode([TOK.vocab_size])


@pytest.mark.parametrize("arch", ["gpt", "llama"])
@pytest.mark.parametrize("size, low, high", [("tiny", 0.2e6, 0.5e6), ("small", 1.2e6, 3e6), ("medium", 7e6, 14e6)])
def test_parameter_counts(size, low, high, arch):
    assert low <= build_model(size, TOK.vocab_size, 32, arch=arch).num_parameters() <= high


def test_unknown_size_lists_valid_names():
    with pytest.raises(ValueError, match=", ".join(SIZES)):
        build_model("huge", TOK.vocab_size, 32)


@pytest.fixture(params=[(False, "gpt"), (True, "gpt"), (False, "llama")], ids=["dense", "moe", "llama"])
def model(request):
    torch.manual_seed(0)
    moe, arch = request.param
    return build_model("tiny", TOK.vocab_size, 32, moe=moe, arch=arch)


@torch.no_grad()
def test_cache_matches_full_forward(model):
    ids = torch.randint(3, TOK.vocab_size, (3, 12))  # [B, T]
    full, cache = model(ids)
    assert full.dtype == torch.float32 and cache is None
    cache = KVCache()
    steps = [model(ids[:, :5], None, cache)[0]]  # the prompt, then one token at a time
    for t in range(5, 12):
        logits, cache = model(ids[:, t:t + 1], None, cache)
        steps.append(logits)
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_left_padding_is_invisible(model):
    prompts = [torch.randint(3, TOK.vocab_size, (n,)) for n in (7, 3, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)  # [B, T], left-padded with PAD
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    cache = KVCache()
    padded, cache = model(ids, mask, cache)
    next_token = torch.randint(3, TOK.vocab_size, (len(prompts), 1))
    padded_next, _ = model(next_token, None, cache)
    for row, p in enumerate(prompts):
        alone, _ = model(torch.cat([p, next_token[row]])[None])  # [1, n + 1, V]
        torch.testing.assert_close(padded[row, width - len(p):], alone[0, :-1], atol=1e-5, rtol=0)
        torch.testing.assert_close(padded_next[row, 0], alone[0, -1], atol=1e-5, rtol=0)


def test_low_precision_model_returns_float32_logits(model):
    logits, _ = copy.deepcopy(model).to(torch.bfloat16)(torch.randint(3, TOK.vocab_size, (2, 6)))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_moe_aux_loss_is_positive_and_differentiable():
    torch.manual_seed(0)
    model = build_model("tiny", TOK.vocab_size, 32, moe=True)
    model(torch.randint(3, TOK.vocab_size, (4, 10)))
    assert model.aux_loss.item() > 0
    model.aux_loss.backward()
    router_grad = model.blocks[0].mlp.router.weight.grad
    assert router_grad is not None and router_grad.abs().sum() > 0
    copy.deepcopy(model)  # a model whose aux_loss holds a graph must still be copyable (BehaviorPolicy)


def test_dense_aux_loss_is_zero():
    model = build_model("tiny", TOK.vocab_size, 32)
    model(torch.randint(3, TOK.vocab_size, (2, 4)))
    assert model.aux_loss.item() == 0


def test_too_long_sequence_is_an_error():
    with pytest.raises(ValueError, match="block_size=8"):
        build_model("tiny", TOK.vocab_size, 8)(torch.randint(3, TOK.vocab_size, (1, 9)))
