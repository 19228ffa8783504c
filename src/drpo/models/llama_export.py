"""The built-in transformer's llama variant as a Hugging Face LlamaForCausalLM state dict (what llama.cpp runs).

    tensors, shape = llama_tensors(model)       # model: GPT with config.arch == "llama"
    write_llama_gguf(path, tensors, shape, "f32")  # drpo/models/gguf_export.py

The mapping, per layer i (``model.layers.{i}.``)::

    norm1.weight          -> input_layernorm.weight
    attn.qkv.weight       -> self_attn.{q,k,v}_proj.weight   (rows [0:C], [C:2C], [2C:3C] of the fused matrix)
    attn.proj.weight      -> self_attn.o_proj.weight
    norm2.weight          -> post_attention_layernorm.weight
    mlp.{gate,up,down}    -> mlp.{gate,up,down}_proj.weight

plus ``wte.weight -> model.embed_tokens.weight`` and ``norm.weight -> model.norm.weight``; the output head is the
embedding (``tied=True``), so there is no ``lm_head.weight``. No Q/K permutation is needed: :func:`rotate` pairs
dimension j of a head with j + D/2, which is Hugging Face's ``rotate_half`` convention (the GGUF writer applies the
permutation to llama.cpp's interleaved pairs, as convert_hf_to_gguf.py does for any HF llama).
"""

from __future__ import annotations

import torch

from drpo.models.gguf_export import LlamaShape
from drpo.models.transformer import GPT, SwiGLU


def rms_eps(norm: torch.nn.RMSNorm) -> float:
    """The epsilon ``norm`` adds: its own, or (eps=None, the built-in model's) the machine epsilon of its dtype."""
    return float(norm.eps) if norm.eps is not None else float(torch.finfo(norm.weight.dtype).eps)


def llama_tensors(model: GPT) -> tuple[dict[str, torch.Tensor], LlamaShape]:
    """The weights of an ``arch="llama"`` GPT in LlamaForCausalLM names (float32 CPU copies), and its shape.

    A LlamaForCausalLM built from these (hidden_act silu, tied embeddings, the shape's rms_norm_eps and rope_theta,
    no biases) computes the model's logits. A GELU (``arch="gpt"``) model has no llama equivalent: ValueError.
    """
    cfg = model.config
    if cfg.arch != "llama" or cfg.n_expert:
        raise ValueError(f"llama_tensors needs the llama variant of the built-in transformer (model.arch=llama, "
                         f"dense); this model is arch={cfg.arch!r}{' with experts' if cfg.n_expert else ''}, whose "
                         "GELU MLP llama.cpp's llama architecture cannot run")

    def copy(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).contiguous().clone()

    C = cfg.n_embd
    tensors = {"model.embed_tokens.weight": copy(model.wte.weight)}
    for i, block in enumerate(model.blocks):
        assert isinstance(block.mlp, SwiGLU)
        prefix = f"model.layers.{i}."
        qkv = block.attn.qkv.weight  # [3C, C]: rows (q|k|v, head, head_dim), as CausalSelfAttention views them
        tensors.update({
            prefix + "input_layernorm.weight": copy(block.norm1.weight),
            prefix + "self_attn.q_proj.weight": copy(qkv[:C]),
            prefix + "self_attn.k_proj.weight": copy(qkv[C:2 * C]),
            prefix + "self_attn.v_proj.weight": copy(qkv[2 * C:]),
            prefix + "self_attn.o_proj.weight": copy(block.attn.proj.weight),
            prefix + "post_attention_layernorm.weight": copy(block.norm2.weight),
            prefix + "mlp.gate_proj.weight": copy(block.mlp.gate.weight),
            prefix + "mlp.up_proj.weight": copy(block.mlp.up.weight),
            prefix + "mlp.down_proj.weight": copy(block.mlp.down.weight),
        })
    tensors["model.norm.weight"] = copy(model.norm.weight)
    shape = LlamaShape(vocab_size=cfg.vocab_size, n_embd=C, n_layer=cfg.n_layer, n_head=cfg.n_head,
                       n_head_kv=cfg.n_head, n_ff=model.blocks[0].mlp.up.out_features,
                       context_length=cfg.block_size, rope_base=float(cfg.rope_base), rms_eps=rms_eps(model.norm),
                       tied=True)
    return tensors, shape
