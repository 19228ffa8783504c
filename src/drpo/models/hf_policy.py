"""What the trainer talks to on a Hugging Face model: :class:`HFPolicy`, its tokenizer, and how it is built.

    policy = build_hf_policy(load_config(None, ["model=hf:/models/qwen", "task=math", "data=train.jsonl"]))
    policy.encode_prompt(example)          # the problem in the tokenizer's chat template
    policy.log_probs(batch, temperature)   # micro-batched (model.micro_batch), the logits only when asked for

:class:`HFTokenizer` gives the tokenizer the interface of ``CharTokenizer`` plus the chat template;
:class:`HFPolicy` adds micro-batched log-probs (``model.micro_batch``) and chunked evaluation sampling
(``model.sample_rows``) for real sequence lengths. There is no supervised warm-up: the HF model is the
base model. The model itself, behind drpo's forward contract, is drpo/models/hf.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from drpo.models.gguf import resolve_model_dir
from drpo.models.hf import HFCausalLM, add_lora, load_hf_model, require_transformers
from drpo.models.log_probs import SequenceLogProbs, sequence_log_probs
from drpo.models.policy import Policy
from drpo.models.sampling import RolloutBatch
from drpo.warmup import load_or_warm_up


# --------------------------------------------------------------------------------------------- the tokenizer
class HFTokenizer:
    """A transformers tokenizer with the interface of ``CharTokenizer``, and prompt formatting.

    ``eos_id`` is the token that ends a response: ``eos_token`` when given (e.g. ``<|im_end|>`` for a
    chat-formatted base model), else the tokenizer's EOS. ``pad_id`` is the tokenizer's PAD, or EOS when it
    has none (padding is always masked, so sharing the id is harmless).
    """

    def __init__(self, tokenizer, chat_template: bool = True, system_prompt: str | None = None,
                 eos_token: str | None = None) -> None:
        self.hf = tokenizer
        self.chat_template, self.system_prompt = chat_template, system_prompt
        if eos_token is not None:
            token_id = tokenizer.convert_tokens_to_ids(eos_token)
            if token_id is None or (token_id == tokenizer.unk_token_id and eos_token != tokenizer.unk_token):
                raise ValueError(f"model.eos_token={eos_token!r} is not a token of this tokenizer")
            self.eos_id = int(token_id)
        elif tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: set model.eos_token to the token that ends a response")
        else:
            self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = tokenizer.bos_token_id
        if chat_template and not tokenizer.chat_template:
            raise ValueError("this tokenizer has no chat template: set model.chat_template=false for plain prompts")
        if system_prompt is not None and not chat_template:
            raise ValueError("model.system_prompt needs model.chat_template=true")

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of ``text``; with ``bos`` the tokenizer's own prefix tokens (Llama's BOS; none for Qwen, GPT-2)."""
        return list(self.hf(text, add_special_tokens=bos)["input_ids"])

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        """Text of ``ids`` without special tokens; with ``stop_at_eos`` nothing from the first ``eos_id`` on."""
        ids = [int(i) for i in ids]
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        # a model's embedding table is often padded past the tokenizer (Qwen: 151936 vs 151665): such ids are no text
        vocab = len(self.hf)  # a call into the Rust tokenizer: once per text, not per token
        return self.hf.decode([i for i in ids if 0 <= i < vocab], skip_special_tokens=True)

    def encode_prompt(self, text: str, messages: tuple | None = None) -> list[int]:
        """A problem as the model sees it: in the chat template as the user turn (plus the system prompt), ready
        for the assistant's answer; or, with ``chat_template=False``, the plain text with the tokenizer's prefix.
        ``messages`` (a task=custom prompt given as chat messages) go through the template whole instead."""
        if messages is not None:
            if not self.chat_template:
                raise ValueError("the prompt column holds chat messages, which need model.chat_template=true")
            messages = list(messages)
            if self.system_prompt is not None and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return self.encode(self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        if not self.chat_template:
            return self.encode(text, bos=True)
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else [])
        messages.append({"role": "user", "content": text})
        formatted = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(formatted, bos=False)  # templates write their own BOS where the model wants one


# --------------------------------------------------------------------------------------------- the policy
@dataclass
class HFPolicy(Policy):
    """A Policy on a Hugging Face model: chat-formatted prompts, micro-batched log-probs, chunked sampling.

    ``micro_batch``: rows per forward when computing log-probs. With gradients each chunk runs under
    activation checkpointing, so the backward recomputes one chunk at a time and peak memory is that of
    ``micro_batch`` rows (logits included: rows x tokens x vocabulary floats) at the cost of a second
    forward. The full logits are returned only when the caller asks for them (``keep_logits``: a top-k loss);
    otherwise ``logits`` is None and no [rows, tokens, vocabulary] logits are formed at all (the output head
    runs over chunks of positions, :func:`drpo.models.log_probs.head_log_probs`). ``sample_rows``: most rows
    sampled in one call by :meth:`generate_text`.
    """

    micro_batch: int | None = None
    sample_rows: int | None = None

    def encode_prompt(self, example) -> list[int]:
        return self.tokenizer.encode_prompt(example.prompt, getattr(example, "messages", None))

    def log_probs(self, batch: RolloutBatch, temperature: float, keep_logits: bool = False) -> SequenceLogProbs:
        if self.micro_batch is None or len(batch) <= self.micro_batch:
            return sequence_log_probs(self.model, batch, temperature, keep_logits)
        parts = []
        for start in range(0, len(batch), self.micro_batch):
            chunk = batch.select(slice(start, start + self.micro_batch))
            if torch.is_grad_enabled():
                parts.append(checkpoint(self._chunk_log_probs, chunk, temperature, keep_logits,
                                          use_reentrant=False))
            else:
                parts.append(self._chunk_log_probs(chunk, temperature, keep_logits))
        log_prob, entropy, logits = zip(*parts, strict=True)
        return SequenceLogProbs(torch.cat(log_prob), torch.cat(entropy),
                                torch.cat(logits) if keep_logits else None)

    def _chunk_log_probs(self, chunk: RolloutBatch, temperature: float, keep_logits: bool):
        out = sequence_log_probs(self.model, chunk, temperature, keep_logits)
        return out.log_prob, out.entropy, out.logits

    @torch.no_grad()
    def generate_text(self, prompts: list[list[int]], samples: int, max_new_tokens: int, temperature: float,
                      generator: torch.Generator | None = None) -> list[str]:
        if self.text_engine != "trainer":  # the engine batches within its own context
            return super().generate_text(prompts, samples, max_new_tokens, temperature, generator)
        per_call = len(prompts) if self.sample_rows is None else max(1, self.sample_rows // samples)
        texts: list[str] = []
        for start in range(0, len(prompts), per_call):
            texts += super().generate_text(prompts[start:start + per_call], samples, max_new_tokens, temperature,
                                           generator)
        return texts


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_hf_policy(config, console=None, task=None) -> HFPolicy:
    """The Policy of a pretrained ``config.model.name`` (hf:PATH, gguf:FILE, smollm2-135m): model, tokenizer, task
    (``task`` when given, else config.task's)."""
    cfg = config.model
    path = resolve_model_dir(cfg.name, console)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model={cfg.name}: {path} is not a model directory (no config.json). model=hf:PATH loads a local "
            "directory with config.json, weights and tokenizer files, e.g. one made by "
            "`huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir DIR` or `save_pretrained(DIR)`")
    transformers = require_transformers()
    torch.manual_seed(config.seed)  # LoRA initialisation
    tokenizer = HFTokenizer(transformers.AutoTokenizer.from_pretrained(path), chat_template=cfg.chat_template,
                            system_prompt=cfg.system_prompt, eos_token=cfg.eos_token)
    model = load_hf_model(path, cfg.dtype, cfg.attn_implementation)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_rank:
        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    model = HFCausalLM(model).to(resolve_device(cfg.device))

    task = task or config.task.build(config.seed, pretrained_model=True)
    policy = HFPolicy(model, tokenizer, task, micro_batch=cfg.micro_batch, sample_rows=cfg.sample_rows,
                      text_engine=config.eval.engine)
    dropped = drop_long_prompts(policy) if task.name in ("math", "custom") else {}  # arith/sort count characters
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    policy.base_info = {
        "model": str(path), "architecture": type(model.hf).__name__, "dtype": cfg.dtype,
        "device": str(next(model.parameters()).device), "parameters": parameters, "trainable": trainable,
        "lora_rank": cfg.lora_rank, "chat_template": cfg.chat_template, "eos_id": tokenizer.eos_id,
        "train_problems": len(task.train), "eval_problems": len(task.eval),
        "skipped_rows": dict(getattr(task, "skipped", {})), "duplicate_rows": dict(getattr(task, "duplicates", {})),
        "dropped_long_prompts": dropped,
    }
    if config.warmup.pretrained:
        policy.base_info.update(load_or_warm_up(policy, config, console))  # fine-tuned on the task: base_model says so
    if console is not None:
        console.print(f"hf model {path.name}: {parameters / 1e6:.1f}M parameters ({trainable / 1e6:.1f}M trained), "
                      f"{len(task.train)} train / {len(task.eval)} eval problems"
                      + (f", dropped {dropped} prompts over task.max_prompt_len" if any(dropped.values()) else "")
                      + (f", skipped bad rows {task.skipped}" if any(getattr(task, "skipped", {}).values()) else ""))
    return policy


def drop_long_prompts(policy: HFPolicy) -> dict[str, int]:
    """Remove problems whose formatted prompt exceeds the task's max_prompt_len tokens; the counts per split."""
    task, limit = policy.task, policy.task.max_prompt_len
    dropped = {}
    for split in ("train", "eval"):
        examples = getattr(task, split)
        kept = [ex for ex in examples if len(policy.encode_prompt(ex)) <= limit]
        if not kept:
            raise ValueError(f"every {split} prompt is longer than max_prompt_len={limit} tokens once formatted "
                             "for this model; raise task.max_prompt_len")
        dropped[split] = len(examples) - len(kept)
        setattr(task, split, kept)
    return dropped
