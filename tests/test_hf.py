"""model=hf:PATH: tiny random-initialised Hugging Face models built locally (no downloads) behind our contract.

The tokenizer is a byte-level BPE (Qwen-style) trained on one sentence, with ``\\boxed{1}``..``\\boxed{3}``
added as whole tokens, so even a random model writes boxed answers, some right and some wrong: rewards
vary within groups and an RL step has a gradient.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from drpo.backends import build_behavior
from drpo.behavior import BehaviorPolicy, SamplingParams
from drpo.behavior.native import NativeBehavior
from drpo.cli import main
from drpo.config import ConfigError, load_config
from drpo.metrics import read_metrics
from drpo.models.log_probs import head_log_probs, sequence_log_probs
from drpo.models.sampling import generate, make_batch
from drpo.models.transformer import KVCache
from drpo.tasks.base import Example
from drpo.trainer import Trainer

transformers = pytest.importorskip("transformers", reason="model=hf:PATH needs transformers (pip install 'drpo[hf]')")
tokenizers = pytest.importorskip("tokenizers")

from drpo.behavior.vllm import batch_from_outputs, vllm_available  # noqa: E402
from drpo.models.hf import HFCausalLM, export_hf, hf_state, load_hf_model  # noqa: E402
from drpo.models.hf_policy import HFTokenizer, build_hf_policy  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
BOXES = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"]
CORPUS = "user\nassistant\nsystem\nWhat is 1+0? 1+1? 1+2? so the answer is"
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(chat_template: bool = True):
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], tokenizers.trainers.BpeTrainer(vocab_size=48, special_tokens=SPECIAL,
                                                                      show_progress=False))
    tok.add_tokens([tokenizers.AddedToken(box, normalized=False) for box in BOXES])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>",
                                                chat_template=CHAT if chat_template else None)


VOCAB = len(make_tokenizer())


def make_model(family: str, vocab_size: int, seed: int = 0, init: float = 0.02):
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, initializer_range=init)
    if family == "qwen2":
        config = transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                                          **common)
        return transformers.Qwen2ForCausalLM(config)
    if family == "llama":
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=256, **common)
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0,
                                     **common)
    return transformers.GPT2LMHeadModel(config)


def save_model(directory, family: str = "qwen2", chat_template: bool = True, init: float = 0.02):
    tokenizer = make_tokenizer(chat_template)
    make_model(family, len(tokenizer), init=init).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    # 12 distinct problems (repeated rows would be dropped as duplicates) with answers 1..3
    path.write_text("".join(json.dumps({"prompt": f"What is 1+{a % 3}?" + " so" * (a // 3), "answer": str(a % 3 + 1)})
                            + "\n" for a in range(12)))
    return path


def wrapped(family: str, init: float = 0.02) -> HFCausalLM:
    return HFCausalLM(make_model(family, VOCAB, init=init).eval())


# ------------------------------------------------------------------------------------------ forward contract
@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2"])
def test_left_padding_is_exact_and_the_cache_reproduces_the_full_forward(family):
    model = wrapped(family)
    ids = torch.randint(4, VOCAB, (1, 7))
    full, cache = model(ids)
    assert full.dtype == torch.float32 and full.shape == (1, 7, VOCAB) and cache is None
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], dim=1)
    logits, _ = model(padded, mask)
    torch.testing.assert_close(logits[:, 3:], full, atol=1e-5, rtol=0)
    last, _ = model(padded, mask, logits_to_keep=1)
    torch.testing.assert_close(last, logits[:, -1:], atol=1e-6, rtol=0)

    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    cached = generate(model, prompts, 2, 6, generator=torch.Generator().manual_seed(1), eos_id=0, pad_id=0)
    uncached = generate(model, prompts, 2, 6, generator=torch.Generator().manual_seed(1), eos_id=0, pad_id=0,
                        use_cache=False)
    assert torch.equal(cached.response_ids, uncached.response_ids)
    torch.testing.assert_close(cached.rollout_log_prob, uncached.rollout_log_prob, atol=1e-5, rtol=0)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 1000])
def test_the_chunked_head_gives_the_log_probs_and_gradients_of_the_full_logits(rows, autocast):
    """head_log_probs against log_softmax of the full logits (nn.Linear's, under bf16 autocast when asked):
    log-probs to 1e-5 (fp32 rounding of the same logits); the entropy to 1e-4 (computed as logsumexp - E[logit],
    two numbers of the logits' size, ~20 here, whose difference loses a few ulps); gradients to 1e-5 in fp32,
    and under autocast to 1% of their norm (bf16 keeps 8 bits: each chunk's weight gradient is rounded to bf16
    before the float32 sum, where nn.Linear rounds the whole sum once)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 32, requires_grad=True)  # [B, T, H]
    weight = torch.randn(VOCAB, 32, requires_grad=True)  # [V, H]
    targets = torch.randint(0, VOCAB, (2, 5))
    grad_out = torch.randn(2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = torch.nn.functional.linear(hidden, weight).float() / 0.7  # [B, T, V]
        log_p = logits.log_softmax(-1)
        expected = log_p.gather(-1, targets[..., None])[..., 0]
        expected_entropy = -(log_p.exp() * log_p).sum(-1)
        expected_grads = torch.autograd.grad((expected * grad_out).sum(), (hidden, weight))
        log_prob, entropy = head_log_probs(hidden, weight, targets, 0.7, chunk=rows * VOCAB)
    assert log_prob.shape == entropy.shape == (2, 5) and not entropy.requires_grad
    torch.testing.assert_close(log_prob, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, expected_entropy.detach(), atol=1e-4, rtol=0)
    for grad, reference in zip(torch.autograd.grad((log_prob * grad_out).sum(), (hidden, weight)), expected_grads,
                               strict=True):
        assert grad.dtype == torch.float32
        if autocast:
            assert (grad - reference).norm() < 0.01 * reference.norm()
        else:
            torch.testing.assert_close(grad, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2"])
def test_log_probs_without_logits_equal_those_of_the_logits(family):
    """keep_logits=False runs the head in chunks over the hidden states (no [N, T, V] logits): same log pi."""
    model = wrapped(family, init=0.5)
    batch = make_batch([[5, 6, 7], [8, 9]], [[16, 17, 0], [15]], pad_id=0)
    full = sequence_log_probs(model, batch, 0.8)
    lean = sequence_log_probs(model, batch, 0.8, keep_logits=False)
    assert full.logits is not None and lean.logits is None
    torch.testing.assert_close(lean.log_prob, full.log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(lean.entropy, full.entropy, atol=1e-5, rtol=0)


def test_a_used_kvcache_is_refused():
    model = wrapped("qwen2")
    used = KVCache(key_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="fresh KVCache"):
        model(torch.ones(1, 2, dtype=torch.long), None, used)


# ------------------------------------------------------------------------------------------ mu vs pi
def test_fp32_rollout_mu_equals_recomputation_and_bf16_differs():
    model = wrapped("qwen2", init=0.5)  # a peaked distribution, so bf16 rounding shows in the log-probs
    prompts = [[5, 6, 7], [8, 9]]
    mismatch = {}
    for precision in ("fp32", "bf16", "int8"):
        behavior = NativeBehavior(model, precision)
        batch = behavior.generate(prompts, 4, 8, sampling=SamplingParams(eos_id=0, pad_id=0,
                                                                         generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            pi = sequence_log_probs(model, batch).log_prob  # [N, T] the trainer's fp32 recomputation
        mismatch[precision] = ((pi - batch.rollout_log_prob).abs() * batch.response_mask).max().item()
    assert mismatch["fp32"] < 1e-5, mismatch
    assert mismatch["bf16"] > 1e-3 and mismatch["int8"] > 1e-3, mismatch


def test_bf16_copy_keeps_float32_rotary_tables():
    behavior = NativeBehavior(wrapped("qwen2"), "bf16")
    buffers = dict(behavior.model.named_buffers())
    assert buffers["hf.model.rotary_emb.inv_freq"].dtype == torch.float32
    assert next(behavior.model.parameters()).dtype == torch.bfloat16


def test_gpt2_conv1d_becomes_linear_so_quantized_rollouts_reach_it(tmp_path):
    model = load_hf_model(save_model(tmp_path / "gpt2", family="gpt2"))
    assert model.drpo_conv1d_modules and all(
        isinstance(model.get_submodule(name), torch.nn.Linear) for name in model.drpo_conv1d_modules)


# ------------------------------------------------------------------------------------------ policy
def test_tokenizer_interface_and_chat_template(qwen_dir):
    raw = transformers.AutoTokenizer.from_pretrained(qwen_dir)  # Qwen2Tokenizer, as for a real Qwen checkpoint
    tok = HFTokenizer(raw)
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (0, 0, VOCAB)
    prompt = tok.encode_prompt("What is 1+1?")
    assert raw.decode(prompt) == "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"
    plain = HFTokenizer(raw, chat_template=False)
    assert plain.encode_prompt("What is 1+1?") == tok.encode("What is 1+1?") != prompt
    ids = tok.encode("so the answer is \\boxed{2}")
    assert tok.decode([*ids, tok.eos_id, *tok.encode("\\boxed{3}")]) == "so the answer is \\boxed{2}"
    assert tok.decode([*ids, tok.eos_id], stop_at_eos=False) == "so the answer is \\boxed{2}"  # specials dropped
    assert tok.decode([*ids, VOCAB + 5]) == "so the answer is \\boxed{2}"  # ids past the tokenizer (padded embeddings)
    assert HFTokenizer(raw, eos_token="<|im_end|>").eos_id == 2
    with pytest.raises(ValueError, match="not a token"):
        HFTokenizer(raw, eos_token="<|nope|>")
    with pytest.raises(ValueError, match="no chat template"):
        HFTokenizer(make_tokenizer(chat_template=False))
    system = HFTokenizer(raw, system_prompt="so")
    assert raw.decode(system.encode_prompt("1+1?")).startswith("<|im_start|>system\nso<|im_end|>")


def test_micro_batched_log_probs_equal_the_full_forward(qwen_dir, data_file):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "model.micro_batch=2",
                                "task.n_eval=2"])
    policy = build_hf_policy(config)
    assert policy.micro_batch == 2
    prompts = [policy.encode_prompt(ex) for ex in policy.task.train[:5]]
    batch = make_batch(prompts, [[16, 17], [15], [18, 19, 0], [15, VOCAB - 1], [17]], pad_id=0)
    full = sequence_log_probs(policy.model, batch)
    full.log_prob.sum().backward()
    expected = [p.grad.clone() for p in policy.model.parameters()]
    policy.model.zero_grad()
    chunked = policy.log_probs(batch, 1.0)
    assert chunked.logits is None
    chunked.log_prob.sum().backward()
    torch.testing.assert_close(chunked.log_prob, full.log_prob.detach(), atol=1e-6, rtol=0)
    for p, g in zip(policy.model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_lora_trains_only_the_adapters(qwen_dir, data_file):
    pytest.importorskip("peft", reason="model.lora_rank needs peft")
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "model.lora_rank=4",
                                "task.n_eval=2"])
    policy = build_hf_policy(config)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert 0 < policy.base_info["trainable"] < policy.base_info["parameters"]
    batch = NativeBehavior(policy.model, "bf16").generate([policy.encode_prompt(policy.task.train[0])], 2, 3,
                                                          sampling=SamplingParams(eos_id=0, pad_id=0))
    assert torch.isfinite(policy.log_probs(batch, 1.0).log_prob).all()


def test_evaluation_sampling_in_chunks_keeps_the_order(qwen_dir, data_file):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2"])
    policy = build_hf_policy(config)
    prompts = [policy.encode_prompt(ex) for ex in policy.task.train[:3]]
    whole = policy.generate_text(prompts, 2, 4, temperature=0.0)
    policy.sample_rows = 2  # one prompt (x 2 samples) per call
    assert policy.generate_text(prompts, 2, 4, temperature=0.0) == whole and len(whole) == 6


def test_config_errors(qwen_dir, tmp_path):
    with pytest.raises(ConfigError, match="apply only to Hugging Face models.*dtype"):
        load_config(None, ["model.dtype=bf16"])
    with pytest.raises(ConfigError, match="vllm_gpu_memory applies only"):
        load_config(None, ["rollout.vllm_gpu_memory=0.5"])
    with pytest.raises(ConfigError, match="'fp8' is not run by rollout.engine=vllm; it runs fp32, bf16, fp16"):
        load_config(None, ["rollout.engine=vllm", "rollout.precision=fp8"])
    config = load_config(None, [f"model=hf:{tmp_path}", "task=math", f"data={tmp_path / 'x.jsonl'}"])
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        build_hf_policy(config)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_drpo_train_on_an_hf_model_and_math_data(qwen_dir, data_file, tmp_path):
    out = tmp_path / "run"
    argv = ["train", f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "steps=2", f"out={out}",
            "tensorboard=false", "rollout.prompts=4", "rollout.group_size=4", "task.max_response_len=6",
            "task.n_eval=2", "eval.prompts=2", "eval.samples=2", "optim.lr=1e-2", "optim.warmup_steps=0"]
    assert main(argv) == 0
    records = read_metrics(out)
    steps = [r for r in records if r["step"] > 0]
    assert len(steps) == 2 and all(math.isfinite(r["loss/value"]) for r in steps)
    assert any(r["reward/std"] > 0 for r in steps), "no reward variance: the run had no gradient"
    assert "eval/sampled_accuracy" in records[-1]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest.pt"):
        assert (out / name).exists(), name
    trained = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["model"]
    initial = HFCausalLM(load_hf_model(qwen_dir)).state_dict()
    changed = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert len(changed) > len(initial) // 2, f"only {changed} changed"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base_model"]["architecture"] == "Qwen2ForCausalLM"

    exported = HFCausalLM(load_hf_model(export_hf(out, tmp_path / "export")))  # a plain HF directory again
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, trained[key], atol=0, rtol=0)


@pytest.mark.parametrize("family", ["gpt2"])
def test_export_keeps_the_checkpoint_layout(tmp_path, family):
    directory = save_model(tmp_path / family, family=family)
    model = HFCausalLM(load_hf_model(directory))
    checkpoint = {"model": model.state_dict(), "config": load_config(None, [f"model=hf:{directory}"]).model_dump()}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, tmp_path / "run" / "checkpoints" / "latest.pt")
    out = export_hf(tmp_path / "run", tmp_path / "out")
    original = transformers.AutoModelForCausalLM.from_pretrained(directory).state_dict()
    again = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


# ------------------------------------------------------------------------------------------ vLLM engine
def test_vllm_outputs_become_a_rollout_batch():
    def lp(value, rank):
        return SimpleNamespace(logprob=value, rank=rank)

    samples = [[([7, 0], [{7: lp(-0.1, 1), 8: lp(-2.5, 2)}, {0: lp(-0.3, 1), 9: lp(-1.5, 2)}]),
                ([9], [{9: lp(-3.0, 4), 7: lp(-0.2, 1), 8: lp(float("-inf"), 2)}])]]
    batch = batch_from_outputs([[5, 6]], samples, top_k_logprobs=2, pad_id=0)
    assert batch.response_ids.tolist() == [[7, 0], [9, 0]]
    assert batch.response_mask.tolist() == [[1, 1], [1, 0]]
    torch.testing.assert_close(batch.rollout_log_prob, torch.tensor([[-0.1, -0.3], [-3.0, 0.0]]))
    assert batch.rollout_topk_ids[1, 0].tolist() == [7, 8]  # by rank; the sampled token outside the top-k is not in it
    assert batch.rollout_topk_log_probs[1, 0, 1].item() == -1e4  # -inf outside the nucleus, floored as natively
    assert batch.group_index.tolist() == [0, 0] and batch.prompt_ids.tolist() == [[5, 6], [5, 6]]


def test_bf16_weights_warn_and_bf16_rollouts_share_them(qwen_dir, data_file, tmp_path):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2",
                                "model.dtype=bf16", "rollout.precision=bf16", f"out={tmp_path}", "tensorboard=false"])
    with pytest.warns(UserWarning, match="no float32 master copy"):
        trainer = Trainer(config)
    assert trainer.behavior.model is trainer.model and next(trainer.model.parameters()).dtype == torch.bfloat16


def test_autocast_trains_float32_weights_with_bf16_compute(qwen_dir, data_file, tmp_path):
    overrides = [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2", "rollout.prompts=2",
                 "rollout.group_size=4", "updates_per_batch=1", f"out={tmp_path}", "tensorboard=false"]
    trainer = Trainer(load_config(None, [*overrides, "model.autocast=bf16"]))
    tokenizer = trainer.policy.tokenizer
    batch = trainer.behavior.generate([trainer.policy.encode_prompt(ex) for ex in trainer.task.train[:2]], 2, 4,
                                      sampling=SamplingParams(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
    with torch.no_grad():
        exact = trainer.policy.log_probs(batch, 1.0).log_prob
        with trainer.trainer_numerics():
            mixed = trainer.policy.log_probs(batch, 1.0).log_prob
    assert mixed.dtype == torch.float32 and not torch.equal(mixed, exact)  # bf16 matmuls, float32 log-softmax
    torch.testing.assert_close(mixed, exact, atol=0.1, rtol=0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train_step()
    assert math.isfinite(metrics["grad_norm"]) and metrics["updates/skipped"] == 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before, strict=True))
    with pytest.raises(ConfigError, match="needs dtype=fp32"):
        load_config(None, [*overrides, "model.autocast=bf16", "model.dtype=bf16"])


def test_native_engine_is_the_behavior_policy_and_vllm_needs_an_hf_model(qwen_dir, data_file):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2"])
    policy = build_hf_policy(config)
    behavior = build_behavior(config, policy)
    assert isinstance(behavior, NativeBehavior) and isinstance(behavior, BehaviorPolicy)
    assert behavior.describe()["engine"] == "native" and behavior.mode == "bf16"
    builtin = load_config(None, ["rollout.engine=vllm"])
    with pytest.raises(ValueError, match="needs a Hugging Face model"):
        build_behavior(builtin, SimpleNamespace(model=None, task=None))


@pytest.mark.skipif(vllm_available(), reason="checks the message shown where vLLM is absent")
def test_vllm_engine_without_vllm_says_how_to_get_it(qwen_dir, data_file):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2",
                                "rollout.engine=vllm", "rollout.precision=bf16"])
    with pytest.raises(ImportError, match="pip install vllm"):
        build_behavior(config, build_hf_policy(config))


@pytest.mark.skipif(not (vllm_available() and torch.cuda.is_available()), reason="vLLM engine needs vllm and a GPU")
def test_vllm_mu_matches_the_trainer_recomputation(qwen_dir, data_file):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2",
                                "rollout.engine=vllm", "rollout.precision=fp32", "model.device=cuda",
                                "rollout.vllm_gpu_memory=0.2"])
    policy = build_hf_policy(config)
    behavior = build_behavior(config, policy)
    assert isinstance(behavior, BehaviorPolicy) and behavior.describe()["engine"] == "vllm"
    batch = behavior.generate([policy.encode_prompt(ex) for ex in policy.task.train[:2]], 4, 4,
                              sampling=SamplingParams(eos_id=0, pad_id=0, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        pi = policy.log_probs(batch, 1.0).log_prob
    assert ((pi - batch.rollout_log_prob).abs() * batch.response_mask).max().item() < 1e-3


def test_math_reward_on_decoded_hf_completions(qwen_dir, data_file):
    config = load_config(None, [f"model=hf:{qwen_dir}", "task=math", f"data={data_file}", "task.n_eval=2"])
    policy = build_hf_policy(config)
    ids = policy.tokenizer.encode("so the answer is \\boxed{2}")
    completion = policy.tokenizer.decode([*ids, policy.tokenizer.eos_id])
    assert policy.task.reward(completion, Example("?", "2")) == 1.0
    assert policy.task.reward(completion, Example("?", "3")) == 0.0


def test_lora_sync_to_vllm_leaves_the_bf16_base_weights_bit_identical():
    """hf_state merges the adapters into copies: the frozen bf16 weights are exactly as they were after many
    syncs, and the merged weights are those of peft's own merge."""
    pytest.importorskip("peft", reason="model.lora_rank needs peft")
    import copy

    from drpo.models.hf import add_lora

    model = HFCausalLM(add_lora(make_model("qwen2", 40), rank=4)).to(torch.bfloat16)
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at 0 (no change at all); a trained adapter has moved it
            parameter.data.normal_(0, 0.5)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for _ in range(20):
        state = hf_state(model)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    reference = copy.deepcopy(model.hf).merge_and_unload().state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[name], reference[name]) for name in reference)


# ------------------------------------------------------------------------------------------ hf_state
def test_hf_state_gives_gpt2_weights_back_in_the_conv1d_layout_of_the_checkpoint(tmp_path):
    """GPT-2's Conv1D weights become nn.Linear at load (transposed); hf_state must hand a checkpoint loader (vLLM)
    the names and the [in, out] layout of transformers' own GPT-2, bit for bit."""
    directory = save_model(tmp_path / "gpt2", family="gpt2")
    original = transformers.AutoModelForCausalLM.from_pretrained(directory).state_dict()
    state = hf_state(HFCausalLM(load_hf_model(directory)))
    assert state.keys() == original.keys()
    assert all(torch.equal(state[name], original[name]) for name in original)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D's [in, out]: really transposed
    on_cpu = hf_state(HFCausalLM(load_hf_model(directory)), cpu=True, dtype=torch.bfloat16)
    assert all(tensor.dtype == torch.bfloat16 for tensor in on_cpu.values() if tensor.is_floating_point())
    assert all(torch.equal(on_cpu[name], original[name].to(torch.bfloat16)) for name in original)


def test_hf_state_of_a_lora_gpt2_loads_into_transformers_and_computes_what_the_model_computes(tmp_path):
    """LoRA merge and Conv1D transpose together: the state loads (strict) into a fresh transformers GPT-2, whose
    logits are those of the adapted model, and which differ from the base model's (the adapters count)."""
    pytest.importorskip("peft", reason="model.lora_rank needs peft")
    from drpo.models.hf import add_lora

    directory = save_model(tmp_path / "gpt2", family="gpt2")
    model = HFCausalLM(add_lora(load_hf_model(directory), rank=4))
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at 0 (no change at all); a trained adapter has moved it
            parameter.data.normal_(0, 0.5)
    fresh = transformers.AutoModelForCausalLM.from_pretrained(directory)
    base_logits = fresh(torch.arange(4, 12)[None]).logits
    fresh.load_state_dict(hf_state(model), strict=True)
    ids = torch.arange(4, 12)[None]  # [1, 8]
    with torch.no_grad():
        adapted, _ = model(ids)
        loaded = fresh(ids).logits.float()
    torch.testing.assert_close(loaded, adapted, atol=1e-5, rtol=1e-5)
    assert (loaded - base_logits).abs().max() > 1e-2
