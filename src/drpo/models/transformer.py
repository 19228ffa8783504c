"""A small decoder-only transformer (dense or mixture-of-experts) for RL on the CPU.

nanoGPT-shaped: RMSNorm, causal self-attention through ``scaled_dot_product_attention``, rotary
positions, tied input/output embeddings. Two things are specific to RL rollouts:

- Position ids come from the attention mask (the count of real tokens before each one), so a left-padded
  prompt gives exactly the logits of the same prompt unpadded; the sampler pads prompts of a batch on the left.
- A :class:`KVCache` that the forward extends in place, so sampling costs one token of compute per step.

The forward contract, shared with the sampler and the trainer::

    logits, cache = model(input_ids, attention_mask=None, cache=None)
    # input_ids [B, T] long; attention_mask [B, T], 1 = real token, 0 = padding (left in prompts, right in
    # responses); logits [B, T, V] float32 whatever the model dtype; cache: pass KVCache() to start one.

``arch="llama"`` swaps the GELU MLP for a SwiGLU one (gate/up/down, SiLU; :func:`llama_hidden` keeps the parameter
count), everything else unchanged: the llama architecture that llama.cpp runs (drpo/models/llama_export.py gives the
weights in Hugging Face LlamaForCausalLM names). The default ``arch="gpt"`` is the published base models' architecture.

The MoE variant replaces each MLP by ``n_expert`` experts with top-k softmax routing; after every forward,
``model.aux_loss`` holds the Switch-Transformer load-balancing loss (a 0-d tensor, 0 for dense models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int
    block_size: int  # longest sequence (prompt + response, real tokens) the rotary table covers
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    mlp_ratio: int = 4
    n_expert: int = 0  # 0 = dense MLP; else experts per layer
    expert_top_k: int = 2  # experts each token is routed to
    rope_base: float = 10000.0
    arch: Literal["gpt", "llama"] = "gpt"  # gpt: GELU MLP; llama: SwiGLU MLP (llama.cpp's llama architecture)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; valid: {', '.join(ARCHS)}")
        if self.arch == "llama" and self.n_expert:
            raise ValueError("arch=llama has no mixture-of-experts variant: llama.cpp's llama architecture has no "
                             "experts of this kind (use arch=gpt for MoE)")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd={self.n_embd} must split into n_head={self.n_head} heads of even size (rotary)")
        if self.n_expert and not 1 <= self.expert_top_k <= self.n_expert:
            raise ValueError(f"expert_top_k={self.expert_top_k} must be in [1, n_expert={self.n_expert}]")


SIZES: dict[str, dict] = {
    "tiny": dict(n_layer=3, n_head=4, n_embd=96),  # ~0.33M parameters
    "small": dict(n_layer=4, n_head=6, n_embd=192),  # ~1.8M
    "medium": dict(n_layer=6, n_head=6, n_embd=384),  # ~10.6M
}
MOE = dict(n_expert=4, expert_top_k=2)
ARCHS = ("gpt", "llama")
LLAMA_MULTIPLE = 32  # llama.cpp's Q4_0/Q8_0 blocks: every weight row must be a multiple of 32 long


def build_model(size: str, vocab_size: int, block_size: int, moe: bool = False, arch: str = "gpt") -> GPT:
    """The named size of :data:`SIZES`, dense or (``moe``) with 4 experts, top-2 routing; ``arch`` gpt or llama."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {', '.join(SIZES)}")
    return GPT(ModelConfig(vocab_size=vocab_size, block_size=block_size, **SIZES[size], **(MOE if moe else {}),
                           arch=arch))


def llama_hidden(n_embd: int, mlp_ratio: int = 4) -> int:
    """Hidden width of the SwiGLU MLP: 2/3 of the GELU MLP's, so its three matrices hold as many parameters as
    the GELU MLP's two, rounded up to a multiple of 32 (llama.cpp's quantization blocks)."""
    return math.ceil(2 * mlp_ratio * n_embd / (3 * LLAMA_MULTIPLE)) * LLAMA_MULTIPLE


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far, one entry per layer, extended in place by each forward.

    ``key_mask`` [B, S] marks which cached positions are real tokens (left padding stays masked forever);
    ``n_real`` [B] counts them, which is the position id of the next real token.
    """

    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [B, H, S, D]
    values: list[torch.Tensor] = field(default_factory=list)  # per layer [B, H, S, D]
    key_mask: torch.Tensor | None = None  # [B, S] bool
    n_real: torch.Tensor | None = None  # [B] long

    @property
    def length(self) -> int:
        return 0 if self.key_mask is None else self.key_mask.shape[1]

    def repeat_rows(self, repeats: int) -> None:
        """Each row ``repeats`` times in a row, in place: a prompt's prefill shared by the samples of its group."""
        self.keys = [k.repeat_interleave(repeats, dim=0) for k in self.keys]
        self.values = [v.repeat_interleave(repeats, dim=0) for v in self.values]
        self.key_mask = self.key_mask.repeat_interleave(repeats, dim=0)
        self.n_real = self.n_real.repeat_interleave(repeats, dim=0)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, H, T, D] with cos/sin [B, 1, T, D/2] (pairs are the two halves of D)."""
    x1, x2 = x.chunk(2, dim=-1)  # [B, H, T, D/2] each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, attn_mask, layer: int, cache: KVCache | None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # [B, H, T, D] each
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            if layer < len(cache.keys):
                k = torch.cat([cache.keys[layer], k], dim=2)  # [B, H, S, D]
                v = torch.cat([cache.values[layer], v], dim=2)
                cache.keys[layer], cache.values[layer] = k, v
            else:
                cache.keys.append(k)
                cache.values.append(v)
        if attn_mask is None:  # no padding, no cache: the plain causal case
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, D]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # [B, T, C]


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class SwiGLU(nn.Module):
    """The llama MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=False)
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Top-k routed experts. Each expert is ``1/top_k`` as wide as the dense MLP, so per-token compute matches it.

    The router runs in the model's dtype: a bf16 or quantized copy sees slightly different router logits,
    and near-ties then route a token to other experts, the MoE train-inference mismatch.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.expert_top_k
        self.router = nn.Linear(cfg.n_embd, cfg.n_expert, bias=False)
        hidden = cfg.mlp_ratio * cfg.n_embd // cfg.expert_top_k
        self.experts = nn.ModuleList(MLP(cfg.n_embd, hidden) for _ in range(cfg.n_expert))

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output [B, T, C], Switch load-balancing loss over the real tokens)."""
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # [N, C]
        probs = self.router(flat).float().softmax(-1)  # [N, E]
        gate, expert_ids = probs.topk(self.top_k, dim=-1)  # [N, k]
        gate = (gate / gate.sum(-1, keepdim=True)).to(x.dtype)  # renormalised over the chosen experts
        out = torch.zeros_like(flat)  # [N, C]
        for e, expert in enumerate(self.experts):
            rows, slot = (expert_ids == e).nonzero(as_tuple=True)  # tokens routed to e, and which of their k
            if len(rows):
                out.index_add_(0, rows, expert(flat[rows]) * gate[rows, slot, None])

        # Switch loss E * sum_e f_e * P_e: f_e = share of routing slots given to e, P_e = mean router prob of e.
        # It is 1 for perfectly balanced routing, and differentiable through P_e.
        weight = torch.ones(B * T, device=x.device) if token_mask is None else token_mask.reshape(-1).float()  # [N]
        n_tokens = weight.sum().clamp(min=1)
        chosen = F.one_hot(expert_ids, probs.shape[-1]).sum(1).float()  # [N, E]
        f = (weight[:, None] * chosen).sum(0) / (n_tokens * self.top_k)  # [E]
        p = (weight[:, None] * probs).sum(0) / n_tokens  # [E]
        return out.view(B, T, C), probs.shape[-1] * (f * p).sum()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.n_embd)
        if cfg.n_expert:
            self.mlp = MoE(cfg)
        elif cfg.arch == "llama":
            self.mlp = SwiGLU(cfg.n_embd, llama_hidden(cfg.n_embd, cfg.mlp_ratio))
        else:
            self.mlp = MLP(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)

    def forward(self, x, cos, sin, attn_mask, token_mask, layer, cache):
        x = x + self.attn(self.norm1(x), cos, sin, attn_mask, layer, cache)  # [B, T, C]
        if isinstance(self.mlp, MoE):
            h, aux = self.mlp(self.norm2(x), token_mask)
            return x + h, aux
        return x + self.mlp(self.norm2(x)), None


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied embeddings

        head_dim = cfg.n_embd // cfg.n_head
        inv_freq = cfg.rope_base ** (-torch.arange(0, head_dim, 2).float() / head_dim)  # [D/2]
        angles = torch.outer(torch.arange(cfg.block_size).float(), inv_freq)  # [block_size, D/2]
        # not persistent: derived from the config, so checkpoints hold only learned weights
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.aux_loss = torch.zeros(())

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):  # GPT-2: residual branches scaled by depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields the tied weight once

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """Logits [B, T, V] (float32) of ``input_ids`` [B, T], continuing ``cache`` when given (extended in place).

        ``logits_to_keep=k`` > 0 returns the logits of the last k positions only ([B, k, V]): a sampling
        prefill needs one next-token distribution, not B x T x V floats (the same contract as HFCausalLM).
        """
        B, T = input_ids.shape
        new_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                    else attention_mask.bool())  # [B, T]
        n_past = torch.zeros(B, dtype=torch.long, device=input_ids.device) if cache is None or cache.n_real is None \
            else cache.n_real  # [B]
        positions = (n_past[:, None] + new_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T] padding repeats a neighbour
        if int(positions.max()) >= self.config.block_size:
            raise ValueError(f"sequence of {int(positions.max()) + 1} tokens exceeds block_size={self.config.block_size}")
        cos = self.rope_cos[positions][:, None]  # [B, 1, T, D/2]
        sin = self.rope_sin[positions][:, None]

        past = 0 if cache is None else cache.length
        key_mask = new_mask if past == 0 else torch.cat([cache.key_mask, new_mask], dim=1)  # [B, S]
        if attention_mask is None and past == 0:
            attn_mask = None
        else:
            causal = torch.ones(T, past + T, dtype=torch.bool, device=input_ids.device).tril(diagonal=past)  # [T, S]
            attn_mask = causal & key_mask[:, None, :]  # [B, T, S]
            # a padding query would see no key at all (NaN softmax); let it see itself, its output is never used
            attn_mask[:, :, past:] |= torch.eye(T, dtype=torch.bool, device=input_ids.device)
            attn_mask = attn_mask[:, None]  # [B, 1, T, S]
        if cache is not None:
            cache.key_mask, cache.n_real = key_mask, n_past + new_mask.sum(-1)

        x = self.wte(input_ids)  # [B, T, C]
        aux = []
        for layer, block in enumerate(self.blocks):
            x, layer_aux = block(x, cos.to(x.dtype), sin.to(x.dtype), attn_mask, new_mask, layer, cache)
            if layer_aux is not None:
                aux.append(layer_aux)
        self.aux_loss = torch.stack(aux).mean() if aux else torch.zeros((), device=x.device)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # [B, k, C]
        logits = self.lm_head(self.norm(x)).float()  # [B, T, V] (or [B, k, V])
        return logits, cache

    def __getstate__(self) -> dict:
        # aux_loss can hold the autograd graph of the last forward, which deepcopy and pickle refuse
        state = dict(super().__getstate__())
        state["aux_loss"] = self.aux_loss.detach()
        return state
