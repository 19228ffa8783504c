"""Hugging Face causal LMs behind drpo's forward contract: ``model=hf:PATH``.

    model = HFCausalLM(load_hf_model("/models/qwen"))             # or add_lora(load_hf_model(...), rank)
    logits, cache = model(input_ids, attention_mask, KVCache())   # [B, T, V] float32, an HFCache
    logits, cache = model(next_token[:, None], None, cache)       # one more step through the cache

Any causal LM that ``transformers`` loads from a local directory (Qwen2/Qwen3, Llama, GPT-2 families)
is wrapped in :class:`HFCausalLM`, which speaks the contract of drpo/models/transformer.py, so the
sampler (drpo/models/sampling.py), the behavior policy (bf16/fp16 copies, fp8/int8 Linear hooks, lag) and
``sequence_log_probs`` run on it unchanged:

- Position ids come from the attention mask (count of real tokens before each one), so left-padded prompts
  give the logits of the unpadded prompt, as for the built-in model.
- The cache: the sampler passes a fresh ``KVCache()`` to start one; the wrapper answers with an
  :class:`HFCache` (transformers' ``DynamicCache`` plus the mask of every cached position) and continues
  from it on the next call. Nothing in the sampler needs to know.
- Rotary frequency tables stay float32 when the behavior policy casts the copy to bf16/fp16, as in real
  inference engines (a bf16 ``inv_freq`` would garble positions beyond a few hundred tokens, a mismatch
  no engine has).
- Dropout is switched off at load: pi must be a deterministic function of the weights, or the
  ratio pi/mu measures dropout noise instead of policy change.

:func:`hf_state` gives the weights under the checkpoint's names and layout (vLLM loads them), :func:`export_hf`
writes a trained run as a model directory. The policy, tokenizer and builder are drpo/models/hf_policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from drpo.checkpoint import load_checkpoint
from drpo.config import RunConfig
from drpo.constants import HF_DTYPES, TORCH_DTYPES
from drpo.models.gguf import is_pretrained_name, resolve_model_dir
from drpo.models.transformer import KVCache

DTYPES = {name: getattr(torch, TORCH_DTYPES[name]) for name in HF_DTYPES}  # model.dtype
# model families whose logits are exactly the hidden state times a bias-free head (no logit scale or soft-cap):
# their log-probs can skip the [B, T, V] logits (HFCausalLM.head_inputs, drpo.models.log_probs.head_log_probs)
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
# config attributes that hold a dropout probability in the transformers model families we support
DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop",
                      "summary_first_dropout", "classifier_dropout")


def require_transformers():
    try:
        import transformers  # lazy: optional dependency (drpo[hf])
    except ImportError as error:
        raise ImportError("model=hf:PATH needs transformers: pip install 'drpo[hf]'") from error
    return transformers


# --------------------------------------------------------------------------------------------- the model
@dataclass
class HFCache:
    """What the sampler carries between calls: transformers' cache, and the mask and count of what it holds."""

    past: Any  # transformers.DynamicCache, extended in place by each forward
    mask: torch.Tensor  # [B, S] long, 1 for the real tokens among the S cached positions
    n_real: torch.Tensor  # [B] long, real tokens cached: the position id of the next real token

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def repeat_rows(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row, in place: a prompt's prefill shared by the samples of its group."""
        self.past.batch_repeat_interleave(repeats)
        self.mask = self.mask.repeat_interleave(repeats, dim=0)
        self.n_real = self.n_real.repeat_interleave(repeats, dim=0)


class HFCausalLM(nn.Module):
    """A transformers causal LM with drpo's forward contract (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model
        self.aux_loss = torch.zeros(())  # the contract's MoE balancing loss; HF models report none here
        # float32 masters of the rotary tables, restored after every dtype cast (see _apply)
        self._rope_fp32 = {name: buffer.detach().float().cpu().clone()
                           for name, buffer in model.named_buffers() if name.endswith("inv_freq")}

    @property
    def config(self):
        return self.hf.config

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for name, master in self._rope_fp32.items():
            module_name, _, buffer_name = name.rpartition(".")
            module = self.hf.get_submodule(module_name)
            module._buffers[buffer_name] = master.to(module._buffers[buffer_name].device)
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | HFCache | None = None,
        *,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, HFCache | None]:
        """Logits [B, T, V] float32 of ``input_ids`` [B, T]; a fresh ``KVCache()`` starts a cache, an HFCache continues.

        ``logits_to_keep=k`` > 0 returns the logits of the last k positions only ([B, k, V]): a prefill
        that needs one next-token distribution need not hold B x T x V floats.
        """
        B, T = input_ids.shape
        new_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()  # [B, T]
        if isinstance(cache, HFCache):
            past, past_mask, n_past = cache.past, cache.mask, cache.n_real
        else:
            if isinstance(cache, KVCache) and cache.length:
                raise ValueError("HFCausalLM continues only its own HFCache; pass a fresh KVCache() to start one")
            past = None if cache is None else require_transformers().DynamicCache(config=self.hf.config)
            past_mask = new_mask[:, :0]  # [B, 0]
            n_past = torch.zeros(B, dtype=torch.long, device=input_ids.device)  # [B]
        positions = (n_past[:, None] + new_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T] padding repeats a neighbour
        mask = torch.cat([past_mask, new_mask], dim=1)  # [B, S + T]
        out = self.hf(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                      use_cache=past is not None, logits_to_keep=logits_to_keep)
        logits = out.logits.float()  # [B, T, V] (or [B, k, V])
        if past is None:
            return logits, None
        return logits, HFCache(out.past_key_values, mask, n_past + new_mask.sum(-1))


    def head_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    last: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(hidden states [B, last, H] entering the output head at the last ``last`` positions, the head's weight
        [V, H]) of a forward without a cache; None for a model family not known to have a plain head (the
        caller then takes the logits from :meth:`forward`). The logits are ``hidden @ weight.T``."""
        model = self.hf.get_base_model() if hasattr(self.hf, "get_base_model") else self.hf  # under peft's LoRA
        head = model.get_output_embeddings()
        if (self.config.model_type not in PLAIN_HEAD_MODEL_TYPES or not isinstance(head, nn.Linear)
                or head.bias is not None):
            return None
        mask = attention_mask.long()  # [B, T]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as in forward
        out = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state[:, -last:], head.weight


def load_hf_model(path: str | Path, dtype: str = "fp32", attn_implementation: str = "sdpa") -> nn.Module:
    """``AutoModelForCausalLM`` from a local directory in ``dtype``, dropout off, in eval mode."""
    transformers = require_transformers()
    config = transformers.AutoConfig.from_pretrained(path)
    for attribute in DROPOUT_ATTRIBUTES:
        if isinstance(getattr(config, attribute, None), float):
            setattr(config, attribute, 0.0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, config=config, dtype=DTYPES[dtype], attn_implementation=attn_implementation)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    _conv1d_to_linear(model)
    return model.eval()


def _conv1d_to_linear(model: nn.Module) -> None:
    """GPT-2's ``Conv1D`` layers (a Linear with a transposed weight) become ``nn.Linear``.

    The behavior policy's fp8/int8 modes round the weights and inputs of every ``nn.Linear``; without
    this, a GPT-2 model would be quantized in its output head only.
    """
    from transformers.pytorch_utils import Conv1D  # lazy: optional dependency (drpo[hf])

    converted = []
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            converted.append(name)
            n_in, n_out = module.weight.shape
            linear = nn.Linear(n_in, n_out, bias=module.bias is not None,
                               dtype=module.weight.dtype, device=module.weight.device)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            model.set_submodule(name, linear)
    model.drpo_conv1d_modules = converted  # their checkpoint layout is transposed (:func:`hf_state`)


def _linear_to_conv1d(model: nn.Module) -> None:
    """Undo :func:`_conv1d_to_linear` (before ``save_pretrained``, so GPT-2 checkpoints keep their layout)."""
    from transformers.pytorch_utils import Conv1D  # lazy: optional dependency (drpo[hf])

    for name in getattr(model, "drpo_conv1d_modules", ()):
        linear = model.get_submodule(name)
        conv = Conv1D(linear.out_features, linear.in_features).to(linear.weight.device, linear.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.T)
            conv.bias.copy_(linear.bias if linear.bias is not None else torch.zeros_like(conv.bias))
        model.set_submodule(name, conv)
    model.drpo_conv1d_modules = []


def add_lora(model: nn.Module, rank: int, alpha: float | None = None) -> nn.Module:
    """LoRA adapters on every Linear but the output head (peft ``all-linear``); only they are trained."""
    try:
        from peft import LoraConfig, get_peft_model  # lazy: optional dependency (drpo[hf])
    except ImportError as error:
        raise ImportError("model.lora_rank > 0 needs peft: pip install peft") from error
    lora = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def hf_state(model: nn.Module, cpu: bool = False, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The weights of an :class:`HFCausalLM` under the names of its Hugging Face checkpoint
    (``cpu``: copies on the CPU, floating ones in ``dtype`` when given).

    LoRA adapters are merged into copies of the base weights: merging in place and unmerging again would
    leave W + dW - dW, which in bf16 is not W, so the frozen weights would drift at every sync. GPT-2 Linear
    weights converted from Conv1D at load are transposed back to the checkpoint's layout.
    """
    inner = model.hf
    peft = hasattr(inner, "get_base_model")
    base = inner.get_base_model() if peft else inner
    merged = _merged_lora_weights(base) if peft else {}
    transposed = set(getattr(base, "drpo_conv1d_modules", ()))
    state = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        tensor = merged.get(name, tensor).detach()
        name = name.replace(".base_layer.", ".")
        if name.rpartition(".")[0] in transposed and name.endswith(".weight"):
            tensor = tensor.T
        if cpu:
            tensor = tensor.to("cpu", dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype,
                               copy=True)
        state[name] = tensor
    return state


@torch.no_grad()
def _merged_lora_weights(base: nn.Module) -> dict[str, torch.Tensor]:
    """{state-dict name of a LoRA layer's base weight: base weight + its active adapters' delta}, new tensors
    (what peft's merge would write into the weight, rounded the same way)."""
    from peft.tuners.lora import LoraLayer  # lazy: optional dependency (drpo[hf])

    merged = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = module.get_base_layer().weight
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if adapter in getattr(module, "lora_variant", {}) or module.lora_bias.get(adapter):
                raise NotImplementedError(f"{name}: only plain LoRA adapters (no DoRA or other variant, no "
                                          "lora_bias) are merged for the vLLM rollout")
            weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
        merged[f"{name}.base_layer.weight"] = weight
    return merged


def export_hf(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the latest policy of a ``drpo train model=hf:...`` run as a Hugging Face model directory.

    The result (weights, config, tokenizer; LoRA adapters merged) loads with ``from_pretrained`` or as
    ``model=hf:OUT_DIR`` for another run or an evaluation.
    """
    state = load_checkpoint(Path(run_dir) / "checkpoints")
    cfg = RunConfig.model_validate(state["config"]).model
    if not is_pretrained_name(cfg.name):
        raise ValueError(f"run {run_dir} trained the built-in model {cfg.name!r}, not a Hugging Face model")
    path = resolve_model_dir(cfg.name)
    model = load_hf_model(path, cfg.dtype, cfg.attn_implementation)
    if cfg.lora_rank:
        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    wrapper = HFCausalLM(model)
    wrapper.load_state_dict(state["model"])
    inner = wrapper.hf.merge_and_unload() if cfg.lora_rank else wrapper.hf
    _linear_to_conv1d(inner)
    out_dir = Path(out_dir)
    inner.save_pretrained(out_dir)
    require_transformers().AutoTokenizer.from_pretrained(path).save_pretrained(out_dir)
    return out_dir

