"""Write the policy's weights as a llama-architecture GGUF file (and LoRA adapters as GGUF adapters) for llama.cpp.

    tensors, shape = hf_llama_tensors(policy.model)              # Hugging Face LlamaForCausalLM names, merged LoRA
    write_llama_gguf(path, tensors, shape, "q8_0", GGUFVocab.from_file(gguf_file("smollm2-135m")))
    lora, alpha = peft_lora_tensors(policy.model)                 # a peft LoRA policy: the adapters alone
    write_lora_gguf(path, lora, alpha, shape)                      # general.type=adapter, adapter.type=lora

The layout is the one llama.cpp's own converters write (convert_hf_to_gguf.py, ``LlamaModel``;
convert_lora_to_gguf.py), so llama.cpp loads these files as it loads theirs:

- Names: ``model.embed_tokens`` -> ``token_embd``, ``model.layers.N.self_attn.q_proj`` -> ``blk.N.attn_q``, ...;
  ``lm_head`` -> ``output`` only when the embedding is not tied (llama.cpp reuses ``token_embd`` otherwise).
- Rotary: Hugging Face rotates the two halves of each head, llama.cpp's llama architecture rotates adjacent
  pairs; the rows of q_proj and k_proj are permuted as ``LlamaModel.permute`` does (k with n_head_kv heads). A
  LoRA adapter's lora_b gets the same row permutation (lora_a acts on the input and is unchanged).
- Types (``weight_type``): 1-D tensors and norms stay F32; every other weight is F32, F16, Q8_0 or Q4_0
  (token_embd included, as convert_hf_to_gguf.py writes it). Quantization is gguf-py's (``gguf.quants``,
  the reference of llama.cpp's C code). A row length that is not a multiple of the 32-element block falls back
  to F16, as the converter does. For q4_0 the output head (``output``, or ``token_embd`` when tied) is Q8_0:
  llama-quantize gives it Q6_K when rows are a multiple of 256 and Q8_0 otherwise (SmolLM2's 576 and the small
  models' widths are not), and gguf-py has no Q6_K quantizer.
- ``vocab=None`` writes no vocabulary (``tokenizer.ggml.model = "none"``, llama-vocab.cpp's
  LLAMA_VOCAB_TYPE_NONE, with ``llama.vocab_size`` giving the token count): llama.cpp then decodes token ids
  and never text, which is all a rollout engine needs. :class:`GGUFVocab` copies a GGUF file's tokenizer
  fields (SmolLM2's from its shipped file) so the written file is a self-contained model for llama.cpp's tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from drpo.models.hf import _merged_lora_weights

WEIGHT_TYPES = ("f32", "f16", "q8_0", "q4_0")
GGUF_INSTALL_HINT = "pip install -c constraints.txt -e '.[smollm2]'  (or: pip install gguf)"
# Hugging Face LlamaForCausalLM per-layer names -> llama.cpp's
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}


def require_gguf():
    try:
        import gguf  # lazy: optional dependency (drpo[llamacpp], drpo[smollm2])
    except ImportError as error:
        raise ImportError(f"writing GGUF files needs the gguf package: {GGUF_INSTALL_HINT}") from error
    return gguf


@dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters of a llama-architecture model, as llama.cpp reads them from a GGUF file."""

    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    context_length: int  # llama.context_length: the longest sequence (prompt + response) the model runs
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    tied: bool = True  # the output head is the token embedding

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2 or self.n_head % self.n_head_kv:
            raise ValueError(f"n_embd={self.n_embd}, n_head={self.n_head}, n_head_kv={self.n_head_kv}: need heads of "
                             "even size and n_head a multiple of n_head_kv")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """{Hugging Face name: torch shape} of every tensor a model of this shape has."""
        kv = self.n_head_kv * self.head_dim
        shapes = {"model.embed_tokens.weight": (self.vocab_size, self.n_embd), "model.norm.weight": (self.n_embd,)}
        if not self.tied:
            shapes["lm_head.weight"] = (self.vocab_size, self.n_embd)
        per_layer = {"input_layernorm": (self.n_embd,), "post_attention_layernorm": (self.n_embd,),
                     "self_attn.q_proj": (self.n_embd, self.n_embd), "self_attn.k_proj": (kv, self.n_embd),
                     "self_attn.v_proj": (kv, self.n_embd), "self_attn.o_proj": (self.n_embd, self.n_embd),
                     "mlp.gate_proj": (self.n_ff, self.n_embd), "mlp.up_proj": (self.n_ff, self.n_embd),
                     "mlp.down_proj": (self.n_embd, self.n_ff)}
        for layer in range(self.n_layer):
            for name, shape in per_layer.items():
                shapes[f"model.layers.{layer}.{name}.weight"] = shape
        return shapes


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a Hugging Face LlamaForCausalLM tensor (``model.layers.3.mlp.up_proj.weight`` ->
    ``blk.3.ffn_up.weight``)."""
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) >= 4 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        module = ".".join(parts[3:-1])
        if module in LAYER_NAMES:
            return f"blk.{int(parts[2])}.{LAYER_NAMES[module]}.weight"
    raise ValueError(f"{hf_name!r} is not a tensor of a Llama model (LlamaForCausalLM names: model.embed_tokens, "
                     "model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj, norms, lm_head)")


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection (or a LoRA lora_b of one) from Hugging Face's rotate-half layout to llama.cpp's
    adjacent pairs: convert_hf_to_gguf.py's ``LlamaModel.permute`` (called with the head count of that tensor)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def rotary_heads(hf_name: str, shape: LlamaShape) -> int | None:
    """The head count to permute ``hf_name``'s rows with: n_head for q_proj, n_head_kv for k_proj, else None."""
    if hf_name.endswith("self_attn.q_proj.weight"):
        return shape.n_head
    if hf_name.endswith("self_attn.k_proj.weight"):
        return shape.n_head_kv
    return None


def tensor_type(gguf_tensor_name: str, n_dims: int, weight_type: str, shape: LlamaShape):
    """The GGML type a tensor is written in (see the module docstring)."""
    gguf = require_gguf()
    Q = gguf.GGMLQuantizationType
    if n_dims <= 1 or gguf_tensor_name.endswith("_norm.weight") or weight_type == "f32":
        return Q.F32
    if weight_type == "f16":
        return Q.F16
    if weight_type == "q8_0":
        return Q.Q8_0
    head = gguf_tensor_name == "output.weight" or (shape.tied and gguf_tensor_name == "token_embd.weight")
    return Q.Q8_0 if head else Q.Q4_0


def encode_tensor(data: np.ndarray, qtype) -> tuple[np.ndarray, Any]:
    """(bytes or floats to write, their type): ``data`` float32 quantized to ``qtype``, F16 when its rows do not
    split into the type's blocks (convert_hf_to_gguf.py's fallback)."""
    gguf = require_gguf()
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def as_float32(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer fields (``tokenizer.*``) of a GGUF file, to write into another: ``(key, value, type,
    element type)`` each, as gguf's reader gives them."""

    fields: tuple[tuple[str, Any, Any, Any], ...]

    @classmethod
    def from_file(cls, path: str | Path) -> GGUFVocab:
        gguf = require_gguf()
        reader = gguf.GGUFReader(str(path))
        fields = []
        for key, field in reader.fields.items():
            if not key.startswith("tokenizer."):
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            fields.append((key, field.contents(), vtype, sub_type))
        if not any(key == "tokenizer.ggml.model" for key, *_ in fields):
            raise ValueError(f"{path} has no tokenizer (no tokenizer.ggml.model field) to copy")
        return cls(tuple(fields))

    def token_count(self) -> int | None:
        for key, value, *_ in self.fields:
            if key == "tokenizer.ggml.tokens":
                return len(value)
        return None

    def add_to(self, writer) -> None:
        for key, value, vtype, sub_type in self.fields:
            writer.add_key_value(key, value, vtype, sub_type)


def write_llama_gguf(path: str | Path, tensors: dict[str, torch.Tensor], shape: LlamaShape, weight_type: str,
                     vocab: GGUFVocab | None = None, name: str = "drpo-policy") -> Path:
    """Write a llama-architecture GGUF model file: ``tensors`` under Hugging Face LlamaForCausalLM names (the
    rotary convention of Hugging Face; permuted here), in ``weight_type`` (f32|f16|q8_0|q4_0), with ``vocab``'s
    tokenizer or none (token ids only). Returns ``path``."""
    gguf = require_gguf()
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"unknown GGUF weight type {weight_type!r}; valid: {', '.join(WEIGHT_TYPES)}")
    expected = shape.expected_shapes()
    given = {k: v for k, v in tensors.items() if not (shape.tied and k == "lm_head.weight")}
    missing, extra = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or extra:
        raise ValueError(f"tensors do not match {shape}: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, tensor in given.items():
        if tuple(tensor.shape) != expected[key]:
            raise ValueError(f"{key} has shape {tuple(tensor.shape)}, {shape} needs {expected[key]}")
    if vocab is not None and vocab.token_count() not in (None, shape.vocab_size):
        raise ValueError(f"the vocabulary has {vocab.token_count()} tokens, the model's embedding "
                         f"{shape.vocab_size} rows")

    path = Path(path)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[weight_type]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(float(shape.rope_base))
    writer.add_layer_norm_rms_eps(float(shape.rms_eps))
    writer.add_vocab_size(shape.vocab_size)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if vocab is None:
        writer.add_tokenizer_model("none")
    else:
        vocab.add_to(writer)
    for key in expected:  # llama.cpp's order: embedding and output norm first, then the layers
        data = as_float32(given[key])
        heads = rotary_heads(key, shape)
        if heads is not None:
            data = np.ascontiguousarray(permute_rotary(data, heads))
        name_ = gguf_name(key)
        encoded, qtype = encode_tensor(data, tensor_type(name_, data.ndim, weight_type, shape))
        writer.add_tensor(name_, encoded, raw_dtype=qtype)
    return _write(writer, path)


def write_lora_gguf(path: str | Path, lora_tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float,
                    base_shape: LlamaShape, weight_type: str = "f32") -> Path:
    """Write a LoRA adapter GGUF for a llama-architecture base model, as convert_lora_to_gguf.py does.

    ``lora_tensors``: {Hugging Face weight name (``model.layers.0.self_attn.q_proj.weight``): (lora_A [r, in],
    lora_B [out, r])}; the layer computes ``W x + (alpha / r) * B A x`` (llama.cpp's scale, peft's ``scaling``).
    Tensors ``blk.N.attn_q.weight.lora_a`` / ``.lora_b`` in F32 (``weight_type`` f32) or F16 (any other: the
    converter's default); lora_b of q/k permuted like their base weights.
    """
    gguf = require_gguf()
    expected = base_shape.expected_shapes()
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    qtype = gguf.GGMLQuantizationType.F32 if weight_type == "f32" else gguf.GGMLQuantizationType.F16
    for key in sorted(lora_tensors, key=lambda k: list(expected).index(k) if k in expected else -1):
        if key not in expected or len(expected[key]) != 2 or key == "model.embed_tokens.weight":
            raise ValueError(f"LoRA on {key!r}: llama.cpp adapters here cover the Linear layers of the blocks")
        a, b = (as_float32(t) for t in lora_tensors[key])
        out_features, in_features = expected[key]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA of {key}: lora_A {a.shape} and lora_B {b.shape} do not fit a "
                             f"[{out_features}, {in_features}] weight")
        heads = rotary_heads(key, base_shape)
        if heads is not None:
            b = np.ascontiguousarray(permute_rotary(b, heads))
        name = gguf_name(key)
        writer.add_tensor(f"{name}.lora_a", gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        writer.add_tensor(f"{name}.lora_b", gguf.quants.quantize(b, qtype), raw_dtype=qtype)
    return _write(writer, path)


def _write(writer, path: Path) -> Path:
    """Header, key-values and tensors of a GGUFWriter to its file, closed whatever happens."""
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


# ------------------------------------------------------------------------------ from a Hugging Face model
def hf_model_of(module: nn.Module) -> nn.Module:
    """The transformers model inside ``module``: an :class:`drpo.models.hf.HFCausalLM` (``.hf``), a peft model
    or a transformers model itself."""
    return getattr(module, "hf", module)


def is_peft(module: nn.Module) -> bool:
    return hasattr(hf_model_of(module), "get_base_model")


def check_llama_config(config) -> None:
    """Raise ValueError unless ``config`` is a plain Llama (what llama.cpp's llama architecture runs exactly)."""
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        raise ValueError(f"rollout.engine=llamacpp serves llama-architecture models (Hugging Face model_type 'llama', "
                         f"e.g. smollm2-135m, or the built-in model with model.arch=llama); this model is "
                         f"{model_type!r}")
    problems = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("biases in attention or MLP")
    head_dim = getattr(config, "head_dim", None)
    if head_dim not in (None, config.hidden_size // config.num_attention_heads):
        problems.append(f"head_dim={head_dim} != hidden_size / num_attention_heads")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act}")
    if rope_type(config) != "default":
        problems.append(f"rope scaling {rope_type(config)!r}")
    if problems:
        raise ValueError(f"this Llama model has {', '.join(problems)}, which the llama.cpp engine does not export")


def rope_type(config) -> str:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return parameters.get("rope_type", parameters.get("type", "default")) or "default"


def rope_base(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def hf_llama_shape(config) -> LlamaShape:
    check_llama_config(config)
    return LlamaShape(vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
                      n_head=config.num_attention_heads,
                      n_head_kv=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                      n_ff=config.intermediate_size, context_length=config.max_position_embeddings,
                      rope_base=rope_base(config), rms_eps=float(config.rms_norm_eps),
                      tied=bool(getattr(config, "tie_word_embeddings", False)))


@torch.no_grad()
def hf_llama_tensors(hf_module: nn.Module, merge_lora: bool = True) -> tuple[dict[str, torch.Tensor], LlamaShape]:
    """(tensors under LlamaForCausalLM names, detached, on the model's device; the shape) of a transformers
    LlamaForCausalLM, an HFCausalLM wrapping one, or either under peft LoRA: with ``merge_lora`` the served
    weights W + scaling * B A (new tensors, the model untouched), else the frozen base weights alone."""
    inner = hf_model_of(hf_module)
    peft = hasattr(inner, "get_base_model")
    base = inner.get_base_model() if peft else inner
    shape = hf_llama_shape(base.config)
    merged = {}
    if peft and merge_lora:
        merged = _merged_lora_weights(base)
    tensors = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        tensor = merged.get(name, tensor).detach()
        name = name.replace(".base_layer.", ".")
        if name.endswith("inv_freq") or (shape.tied and name == "lm_head.weight"):
            continue
        tensors[name] = tensor
    return tensors, shape


def peft_lora_tensors(hf_module: nn.Module) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """({Hugging Face weight name: (lora_A [r, in], lora_B [out, r])}, alpha) of a peft LoRA model's active
    adapter, such that every layer adds (alpha / r) B A x: alpha is peft's ``scaling`` times r, which must be
    the same for every layer (one adapter.lora.alpha per GGUF file)."""
    from peft.tuners.lora import LoraLayer  # lazy: optional dependency (drpo[hf])

    base = hf_model_of(hf_module).get_base_model()
    lora, alphas = {}, set()
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if adapter in getattr(module, "lora_variant", {}) or module.lora_bias.get(adapter) or \
                    getattr(module, "use_dora", {}).get(adapter):
                raise NotImplementedError(f"{name}: only plain LoRA adapters (no DoRA or other variant, no lora_bias) "
                                          "are served as llama.cpp adapters")
            if f"{name}.weight" in lora:
                raise NotImplementedError(f"{name}: more than one active LoRA adapter")
            a, b = module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()
            lora[f"{name}.weight"] = (a, b)
            alphas.add(round(float(module.scaling[adapter]) * a.shape[0], 6))
    if len(alphas) > 1:
        raise NotImplementedError(f"LoRA layers with different scalings alpha / r ({sorted(alphas)}): a llama.cpp "
                                  "adapter has one alpha")
    if not lora:
        raise ValueError("the peft model has no active LoRA adapter")
    return lora, alphas.pop()
