"""The built-in transformer's llama variant (model.arch=llama): what llama.cpp runs, checked against independent
implementations: Hugging Face's LlamaForCausalLM and llama.cpp itself."""

from __future__ import annotations

import pytest
import torch

from drpo.models import SIZES, CharTokenizer, build_model
from drpo.models.transformer import LLAMA_MULTIPLE, llama_hidden

TOK = CharTokenizer()
BLOCK = 32
# llama.cpp (F32 GGUF, CPU) against our fp32 forward, max |logit diff| on the tiny model (logits up to ~2), measured
# over 3 seeds: <= 4.8e-7 with an F32 KV cache and no flash attention; 1.1e-4 to 3.1e-4 with llama.cpp's defaults
# (F16 KV cache, flash attention, which rounds Q K^T and softmax(.) V through F16 on the CPU)
LLAMACPP_EXACT_ATOL = 5e-6
LLAMACPP_DEFAULT_ATOL = 2e-3


def llama_model(seed: int = 0, size: str = "tiny"):
    """A random llama-variant model whose norms are not all ones, so a misplaced norm weight shows."""
    torch.manual_seed(seed)
    model = build_model(size, TOK.vocab_size, BLOCK, arch="llama").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("size", list(SIZES))
def test_every_llama_row_splits_into_quantization_blocks_and_parameters_match_gpt(size):
    n_embd = SIZES[size]["n_embd"]
    n_ff = llama_hidden(n_embd)
    assert n_embd % LLAMA_MULTIPLE == 0 and n_ff % LLAMA_MULTIPLE == 0  # every weight row: n_embd or n_ff long
    gpt, llama = build_model(size, TOK.vocab_size, BLOCK), build_model(size, TOK.vocab_size, BLOCK, arch="llama")
    assert llama.blocks[0].mlp.up.out_features == n_ff
    assert abs(llama.num_parameters() - gpt.num_parameters()) / gpt.num_parameters() < 0.01


def test_the_config_offers_the_architectures_the_model_builds():
    import typing

    from drpo.config import ModelConfig
    from drpo.models.transformer import ARCHS

    assert typing.get_args(ModelConfig.model_fields["arch"].annotation) == ARCHS
    with pytest.raises(ValueError, match="unknown arch 'mamba'"):
        build_model("tiny", TOK.vocab_size, BLOCK, arch="mamba")


def test_llama_with_experts_is_an_error():
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        build_model("tiny", TOK.vocab_size, BLOCK, moe=True, arch="llama")
    from drpo.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="llama.cpp's llama architecture"):
        load_config(None, ["model=tiny", "model.arch=llama", "model.moe=true"])
    with pytest.raises(ConfigError, match="arch=llama applies to the built-in"):
        load_config(None, ["model=hf:/some/dir", "model.arch=llama"])


def test_the_base_model_cache_key_tells_the_architectures_apart():
    import hashlib
    import json

    from drpo.config import load_config
    from drpo.warmup import KEYS_ADDED_LATER, WARMUP_VERSION, base_model_key

    gpt, llama = load_config(None, ["model=tiny"]), load_config(None, ["model=tiny", "model.arch=llama"])
    assert base_model_key(gpt) != base_model_key(llama)
    # the gpt key is the one from before model.arch existed: the model section without the arch field (and the
    # task and warm-up sections without the keys added since, at their defaults)
    model = {k: v for k, v in gpt.model.model_dump().items() if k != "arch"}
    task, warmup = ({k: v for k, v in section.model_dump().items() if k not in KEYS_ADDED_LATER[name]}
                    for name, section in (("task", gpt.task), ("warmup", gpt.warmup)))
    recipe = {"version": WARMUP_VERSION, "model": model, "task": task, "warmup": warmup, "seed": gpt.seed}
    assert base_model_key(gpt) == hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def test_gpt_arch_keeps_its_parameters_and_initialisation():
    torch.manual_seed(0)
    default = build_model("tiny", TOK.vocab_size, BLOCK)
    torch.manual_seed(0)
    named = build_model("tiny", TOK.vocab_size, BLOCK, arch="gpt")
    assert [n for n, _ in default.named_parameters()][:8] == [
        "wte.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
        "blocks.0.norm2.weight", "blocks.0.mlp.up.weight", "blocks.0.mlp.down.weight", "blocks.1.norm1.weight"]
    for (name, a), (_, b) in zip(default.state_dict().items(), named.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_llama_tensors_refuses_a_gelu_model():
    from drpo.models.llama_export import llama_tensors

    with pytest.raises(ValueError, match="model.arch=llama"):
        llama_tensors(build_model("tiny", TOK.vocab_size, BLOCK))


def hf_llama(tensors, shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.n_embd, intermediate_size=shape.n_ff,
                         num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
                         num_key_value_heads=shape.n_head_kv, hidden_act="silu",
                         max_position_embeddings=shape.context_length, rms_norm_eps=shape.rms_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": shape.rope_base},
                         tie_word_embeddings=shape.tied, attention_bias=False, mlp_bias=False)
    hf = LlamaForCausalLM(config).eval()
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied: the head is the embedding
    return hf


@pytest.mark.parametrize("size", ["tiny", "small"])
@torch.no_grad()
def test_hugging_face_llama_with_the_exported_weights_computes_our_logits(size):
    from drpo.models.llama_export import llama_tensors

    model = llama_model(size=size)
    tensors, shape = llama_tensors(model)
    assert shape.rms_eps == torch.finfo(torch.float32).eps  # what nn.RMSNorm(eps=None) adds in float32
    assert (shape.n_head_kv, shape.n_ff, shape.context_length, shape.tied) == (
        shape.n_head, llama_hidden(shape.n_embd), BLOCK, True)
    hf = hf_llama(tensors, shape)
    ids = torch.randint(0, TOK.vocab_size, (3, BLOCK))  # unpadded: our positions come from the attention mask
    ours, _ = model(ids)
    theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)  # measured max |diff| ~1e-6


def llamacpp_logits(path, tokens: list[int], n_vocab: int, exact: bool) -> torch.Tensor:
    """Logits [T, V] of every position of ``tokens`` (one sequence), through llama.cpp's C API; ``exact``: an F32
    KV cache and no flash attention (llama.cpp's CPU flash attention rounds through F16), else its defaults."""
    import numpy as np

    from drpo.behavior.llamacpp import import_llama_cpp

    L = import_llama_cpp()  # the binding, initialised with a quiet log
    model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
    assert model, f"llama.cpp could not load {path}"
    params = L.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = (
        BLOCK, BLOCK, BLOCK, 1, 1)
    if exact:
        params.type_k = params.type_v = L.GGML_TYPE_F32
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, params)
    assert ctx, "llama.cpp could not create a context"
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        assert L.llama_decode(ctx, batch) == 0
        rows = [np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
                for i in range(len(tokens))]
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
        L.llama_model_free(model)
    return torch.from_numpy(np.stack(rows))


@pytest.mark.parametrize("exact, atol", [(True, LLAMACPP_EXACT_ATOL), (False, LLAMACPP_DEFAULT_ATOL)],
                         ids=["f32-kv-no-flash-attn", "llamacpp-defaults"])
@torch.no_grad()
def test_llamacpp_runs_the_llama_variant_written_as_gguf(tmp_path, exact, atol):
    pytest.importorskip("llama_cpp")
    from drpo.models.gguf_export import write_llama_gguf
    from drpo.models.llama_export import llama_tensors

    model = llama_model(seed=1)
    tensors, shape = llama_tensors(model)
    path = write_llama_gguf(tmp_path / "tiny-llama.gguf", tensors, shape, "f32", vocab=None)
    tokens = torch.randint(3, TOK.vocab_size, (BLOCK,), generator=torch.Generator().manual_seed(2))
    ours = model(tokens[None])[0][0]  # [T, V]
    theirs = llamacpp_logits(path, tokens.tolist(), TOK.vocab_size, exact)
    torch.testing.assert_close(theirs, ours, atol=atol, rtol=0)


@torch.no_grad()
def test_llamacpp_behavior_serves_the_llama_variant():
    pytest.importorskip("llama_cpp")
    from drpo.behavior.base import SamplingParams
    from drpo.behavior.llamacpp import LlamaCppBehavior

    model = llama_model(seed=3)
    prompt = TOK.encode("12+34=", bos=True)
    behavior = LlamaCppBehavior(model, mode="f32", threads=1)
    try:
        batch = behavior.generate([prompt], group_size=1, max_new_tokens=1,
                                  sampling=SamplingParams(eos_id=TOK.eos_id, pad_id=TOK.pad_id, temperature=0.0))
    finally:
        behavior.close()
    log_p = model(torch.tensor([prompt]))[0][0, -1].log_softmax(-1)  # [V]: our next-token distribution
    token = int(batch.response_ids[0, 0])
    assert token == int(log_p.argmax())  # greedy: the same token
    torch.testing.assert_close(batch.rollout_log_prob[0, 0], log_p[token], atol=LLAMACPP_DEFAULT_ATOL, rtol=0)


@pytest.mark.parametrize("engine", ["native", "llamacpp"])
def test_train_runs_the_llama_variant_with_its_warm_up(tmp_path, monkeypatch, engine):
    if engine == "llamacpp":
        pytest.importorskip("llama_cpp")
    from drpo.cli import main

    monkeypatch.setenv("DRPO_CACHE", str(tmp_path / "cache"))
    args = ["train", "model=tiny", "model.arch=llama", "steps=2", "warmup.steps=2", "warmup.target_accuracy=null",
            "rollout.prompts=4", "rollout.group_size=4", "eval.prompts=8", "eval.samples=2", "tensorboard=false",
            f"rollout.engine={engine}", f"out={tmp_path / 'run'}"]
    assert main(args) == 0
    assert (tmp_path / "run" / "summary.json").exists()
    assert len(list((tmp_path / "cache" / "base").glob("*.pt"))) == 1  # the llama base model, warmed up and cached
