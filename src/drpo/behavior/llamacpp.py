"""mu served by llama.cpp on the CPU (``rollout.engine=llamacpp``): a genuine inference engine's numerics.

    behavior = LlamaCppBehavior(policy, mode="q8_0", lag=0, seed=0, threads=None)
    batch = behavior.generate(prompts, group_size=8, max_new_tokens=64, sampling=SamplingParams(eos_id=2, pad_id=0))
    optimizer.step(); behavior.sync(policy.model)   # the served weights (those of `lag` syncs ago) reach llama.cpp

The trainer trains the torch model; this engine serves its weights through llama.cpp's low-level C API
(``llama_cpp.llama_cpp``, the ctypes binding of llama.h; never the high-level ``Llama`` class, whose
completion API samples with its own top-k / min-p / temperature chain and whose log-probs are not those of
the draw). What the engine does:

- Weights: at construction and after every :meth:`sync`, the served weights (:class:`LaggedWeights`: those of
  ``lag`` syncs ago) are written as a llama-architecture GGUF in the mode's weight type (f32, f16, q8_0,
  q4_0; drpo/models/gguf_export.py) into a temporary directory the object owns, and loaded in place of the
  previous model (which is freed). A peft LoRA policy whose base weights are frozen has its base GGUF written
  once and its adapter written and hot-loaded at every sync (``llama_adapter_lora_init``,
  ``llama_set_adapters_lora``), as LoRA serving engines do.
- Decoding: token ids in and out, never text (the GGUF has no vocabulary unless one is given). As many groups
  as llama.cpp allows sequences (``llama_max_parallel_sequences``, 256) share one context; each sequence has
  its own KV stream (``kv_unified=false``) of longest prompt + max_new_tokens cells, so n_ctx is that times
  the number of sequences. Each prompt is decoded once, as its group's first sequence, and copied to the
  group's other sequences with ``llama_memory_seq_cp``; then every step is one ``llama_decode`` of one
  ``llama_batch`` holding the next token of every alive sequence. The memory is cleared between batches.
  Per-sequence streams, not one unified cache: in a unified cache every token's attention spans the cells of
  all sequences (masked), which measured 8x slower on SmolLM2 for 8 prompts x 8 samples x 64 tokens at f16
  (150 s against 18 s, 2 threads) and 10x on the test model at f32.
- mu is exact by construction: the engine's logits of each position (``llama_get_logits_ith``) go through our
  own sampler: log-softmax of logits / temperature in float64 over the full vocabulary (the nucleus when
  top_p < 1, with :func:`drpo.models.sampling.sampling_log_probs`'s rule), one uniform per row and step drawn
  from ``SamplingParams.generator`` (inverse CDF), and the log-prob of the drawn token recorded (float32).
  No top-k, min-p or penalties. Temperature 0 is greedy, recording the log-prob at temperature 1, as the
  native sampler does.

Numerics per mode (drpo.behavior.modes): f32 keeps every number F32: an F32 KV cache and flash attention off
(llama.cpp's CPU flash-attention kernel rounds Q and V to F16 even over an F32 cache: 4e-4 on the logits of a
one-token prompt of the test model). f16, q8_0 and q4_0 run llama.cpp's defaults: F16 KV cache, flash attention
where it supports it. Everything else (kernels, weight repacking) is llama.cpp's own on this CPU: that is the
engine being measured.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from drpo.behavior.base import SamplingParams
from drpo.behavior.lagged import LaggedWeights, ServesLaggedWeights
from drpo.behavior.modes import ROLLOUT_MODES, modes_of
from drpo.models.gguf_export import (
    GGUFVocab,
    LlamaShape,
    hf_llama_tensors,
    hf_model_of,
    is_peft,
    peft_lora_tensors,
    write_llama_gguf,
    write_lora_gguf,
)
from drpo.models.llama_export import llama_tensors
from drpo.models.sampling import (
    TOPK_LOG_PROB_FLOOR,
    RolloutBatch,
    check_generate_args,
    left_pad,
    sampling_log_probs,
)

ENGINE = "llamacpp"
MODES = modes_of(ENGINE)  # f32, f16, q8_0, q4_0
INSTALL_HINT = ('pip install -c constraints.txt -e ".[llamacpp]"  (llama-cpp-python builds llama.cpp from source: '
                "about 20 CPU-minutes)")
VERBOSE_ENV = "DRPO_LLAMACPP_VERBOSE"  # 1: llama.cpp's own log on stderr (else kept quiet, errors quoted in ours)
DECODE_ERRORS = {1: "no KV-cache slot for the batch (the context is too small)", 2: "aborted",
                 -1: "invalid batch (a token id outside the vocabulary?)"}


# ------------------------------------------------------------------------------------------- the library
_lib = None
_lib_lock = threading.Lock()
_log_lines: deque[str] = deque(maxlen=40)  # llama.cpp's recent warnings and errors, quoted in our errors


def import_llama_cpp():
    """``llama_cpp.llama_cpp`` (the low-level binding), initialised once with a quiet log; a clear ImportError
    naming the install command when llama-cpp-python is not installed."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        try:
            from llama_cpp import llama_cpp as lib  # lazy: optional dependency (drpo[llamacpp])
        except ImportError as error:
            raise ImportError(f"rollout.engine=llamacpp needs llama-cpp-python, which is not installed: {INSTALL_HINT}"
                              ) from error
        lib.llama_log_set(_log_callback(lib), ctypes.c_void_p(0))
        lib.llama_backend_init()
        _lib = lib
        return lib


_callback_ref = None  # the C function pointer must outlive every call llama.cpp makes to it


def _log_callback(lib):
    global _callback_ref
    verbose = os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    state = {"last": 0}

    def on_log(level: int, text: bytes, _user_data) -> None:
        level = state["last"] if level == 5 else level  # GGML_LOG_LEVEL_CONT continues the previous line's level
        state["last"] = level
        message = text.decode("utf-8", errors="replace") if text else ""
        if verbose:
            print(message, end="", file=sys.stderr, flush=True)
        if level in (3, 4) and message.strip():  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            _log_lines.append(message.strip())

    _callback_ref = lib.llama_log_callback(on_log)
    return _callback_ref


def _recent_log() -> str:
    lines = list(_log_lines)[-6:]
    return (" llama.cpp said: " + " | ".join(lines)) if lines else ""


# ------------------------------------------------------------------------------------------- the weights
@dataclass
class LlamaSource:
    """Where the served weights come from: a Hugging Face Llama (merged LoRA, or base + adapter) or the built-in
    model with arch=llama (its tensors under Hugging Face names from drpo.models.llama_export)."""

    shape: LlamaShape
    tensors: Callable[[nn.Module], dict[str, torch.Tensor]]  # the served weights, Hugging Face names
    lora: bool = False  # serve the frozen base once and the adapter at every sync


def llama_source(module: nn.Module, use_lora: bool | None = None) -> LlamaSource:
    """How to export ``module`` to llama.cpp; ValueError naming what is supported when it is not a Llama."""
    if hasattr(module, "hf") or hasattr(module, "get_base_model") or hasattr(getattr(module, "config", None),
                                                                              "model_type"):
        inner = hf_model_of(module)
        peft = is_peft(module)
        base = inner.get_base_model() if peft else inner
        _, shape = hf_llama_tensors(base)  # raises ValueError for another architecture
        lora = peft and (use_lora if use_lora is not None else _only_lora_trains(inner))
        if use_lora and not peft:
            raise ValueError("use_lora=True needs a peft LoRA policy")
        return LlamaSource(shape, lambda m: hf_llama_tensors(m)[0], lora)
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "arch", None) == "llama" and not getattr(config, "n_expert", 0):
        _, shape = llama_tensors(module)
        return LlamaSource(shape, lambda m: llama_tensors(m)[0])
    what = (f"the built-in model with arch={getattr(config, 'arch', '?')!r}"
            + (" and experts" if getattr(config, "n_expert", 0) else "")) if config is not None else type(module).__name__
    raise ValueError(f"rollout.engine=llamacpp serves llama-architecture models: a Hugging Face Llama (model_type "
                     f"'llama', e.g. model=smollm2-135m) or the built-in model with model.arch=llama (dense); "
                     f"this policy is {what}")


def _only_lora_trains(inner: nn.Module) -> bool:
    """Whether the only trainable parameters of a peft model are its LoRA matrices (the base stays as loaded)."""
    return all("lora_" in name for name, p in inner.named_parameters() if p.requires_grad)


def _cpu_copy(tensors: dict[str, torch.Tensor], dtype_2d: torch.dtype) -> dict[str, torch.Tensor]:
    """Detached CPU copies (2-D tensors in ``dtype_2d``, the rest float32); a tensor under two names copied once."""
    copies: dict[int, torch.Tensor] = {}
    out = {}
    for name, tensor in tensors.items():
        if id(tensor) not in copies:
            dtype = dtype_2d if tensor.dim() == 2 else torch.float32
            copies[id(tensor)] = tensor.detach().to("cpu", dtype, copy=True)
        out[name] = copies[id(tensor)]
    return out


# ------------------------------------------------------------------------------------------- the engine
class _Handles:
    """The C objects (model, context, adapter) and the temporary directory; freed by :meth:`close`, also when the
    behavior object is collected."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.model = None
        self.ctx = None
        self.adapter = None
        self.batch = None

    def free_context(self) -> None:
        lib = _lib
        if self.batch is not None:
            lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            lib.llama_free(self.ctx)
            self.ctx = None

    def close(self) -> None:
        if _lib is not None:
            self.free_context()
            if self.adapter is not None:
                _lib.llama_adapter_lora_free(self.adapter)
                self.adapter = None
            if self.model is not None:
                _lib.llama_model_free(self.model)
                self.model = None
        shutil.rmtree(self.directory, ignore_errors=True)


def load_model(path: str | Path):
    """``llama_model_load_from_file`` on the CPU; RuntimeError naming the file when llama.cpp returns NULL."""
    lib = import_llama_cpp()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not load the GGUF model {path}.{_recent_log()}")
    return model


class LlamaCppBehavior(ServesLaggedWeights):
    """mu: llama.cpp serving the policy's weights of ``lag`` syncs ago in ``mode`` (f32|f16|q8_0|q4_0).

    ``policy``: a drpo Policy (``.model`` a Llama: Hugging Face, possibly under peft LoRA, or the built-in model
    with arch=llama). ``seed`` seeds draws when :class:`SamplingParams` brings no generator. ``threads``: llama.cpp
    threads (default: torch's, so OMP_NUM_THREADS and `drpo compare --threads` bound both engines alike; more
    threads than free cores make llama.cpp's workers spin against each other, 10x slower on a busy machine). ``vocab``: a tokenizer to write into the GGUF files (only
    for using them with llama.cpp's tools; decoding is by token id). ``use_lora``: serve a peft policy as base +
    adapter (default: when only the LoRA matrices train) or as merged weights (False).
    """

    engine = ENGINE

    def __init__(self, policy, mode: str = "f16", lag: int = 0, seed: int = 0, threads: int | None = None, *,
                 vocab: GGUFVocab | None = None, use_lora: bool | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"rollout.engine=llamacpp runs rollout.precision {', '.join(MODES)}; got {mode!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        module = policy if isinstance(policy, nn.Module) else policy.model
        self.source = llama_source(module, use_lora)  # before the import: an unsupported model fails the same way
        self.lib = import_llama_cpp()
        self.mode, self.lag, self.seed = mode, lag, seed
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.vocab = vocab
        self.shape = self.source.shape
        self.logits_hook: Callable[[list[int], np.ndarray], None] | None = None  # tests: (rows, logits [n, V])
        self.context_overrides: dict[str, Any] = {}  # llama_context_params fields to set (experiments)
        self.sync_seconds: float = 0.0  # wall time of the last weight push (GGUF write + load)
        self._generator = torch.Generator().manual_seed(seed)  # the draws when SamplingParams brings no generator
        self._files = 0
        self._handles = _Handles(Path(tempfile.mkdtemp(prefix="drpo-llamacpp-")))
        self._finalizer = weakref.finalize(self, self._handles.close)
        self._ctx_size = (0, 0, 0)  # (cells per sequence, n_seq_max, n_batch) of the live context
        self.policy = module
        dtype_2d = torch.float16 if mode == "f16" else torch.float32  # what the GGUF would round 2-D weights to
        if self.source.lora:
            self.lora_alpha = peft_lora_tensors(module)[1]
            snapshot = self._lora_snapshot
            self._load_model(write_llama_gguf(self._new_file("base"), hf_llama_tensors(module, merge_lora=False)[0],
                                              self.shape, mode, vocab))
        else:
            def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
                return _cpu_copy(self.source.tensors(m), dtype_2d)
        self.weights = LaggedWeights(module, mode, lag, snapshot)
        self._serve()

    # ------------------------------------------------------------------------------------------- weights
    def _new_file(self, stem: str) -> Path:
        self._files += 1
        return self._handles.directory / f"{stem}-{self._files}.gguf"

    @staticmethod
    def _lora_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
        lora, _ = peft_lora_tensors(module)
        out = {}
        for name, (a, b) in lora.items():
            out[f"{name}.lora_A"] = a.detach().to("cpu", torch.float32, copy=True)
            out[f"{name}.lora_B"] = b.detach().to("cpu", torch.float32, copy=True)
        return out

    def _serve(self) -> None:
        start = time.perf_counter()
        state = self.weights.served()
        if self.source.lora:
            if state is None:
                state = self._lora_snapshot(self.policy)
            lora = {name.removesuffix(".lora_A"): (state[name], state[name.removesuffix(".lora_A") + ".lora_B"])
                    for name in state if name.endswith(".lora_A")}
            path = write_lora_gguf(self._new_file("lora"), lora, self.lora_alpha, self.shape,
                                   "f32" if self.mode == "f32" else "f16")
            self._load_adapter(path)
        else:
            tensors = state if state is not None else self.source.tensors(self.policy)
            self._load_model(write_llama_gguf(self._new_file("model"), tensors, self.shape, self.mode, self.vocab))
        self.sync_seconds = time.perf_counter() - start

    def _load_model(self, path: Path) -> None:
        """Load ``path`` in place of the served model (the context is rebuilt on the next generate)."""
        model = load_model(path)
        handles = self._handles
        handles.free_context()
        self._ctx_size = (0, 0, 0)
        if handles.adapter is not None:
            self.lib.llama_adapter_lora_free(handles.adapter)
            handles.adapter = None
        if handles.model is not None:
            self.lib.llama_model_free(handles.model)
        handles.model = model
        self.model_path = path  # the GGUF file being served
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(model))
        self._remove_older(path)

    def _load_adapter(self, path: Path) -> None:
        """Load the LoRA adapter ``path`` and serve it in place of the previous one (freed)."""
        adapter = self.lib.llama_adapter_lora_init(self._handles.model, str(path).encode())
        if not adapter:
            raise RuntimeError(f"llama.cpp could not load the LoRA adapter {path}.{_recent_log()}")
        old, self._handles.adapter = self._handles.adapter, adapter
        if self._handles.ctx is not None:
            self._set_adapter()
        if old is not None:
            self.lib.llama_adapter_lora_free(old)
        self._remove_older(path)

    def _set_adapter(self) -> None:
        adapters = (self.lib.llama_adapter_lora_p_ctypes * 1)(self._handles.adapter)
        scales = (ctypes.c_float * 1)(1.0)
        if self.lib.llama_set_adapters_lora(self._handles.ctx, adapters, 1, scales) != 0:
            raise RuntimeError(f"llama.cpp could not apply the LoRA adapter.{_recent_log()}")

    def _remove_older(self, path: Path) -> None:
        """Delete the files of earlier weights of ``path``'s kind (the base model of a LoRA policy stays)."""
        kind = path.name.split("-")[0]
        for old in self._handles.directory.glob(f"{kind}-*.gguf"):
            if old != path:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------- context
    def _context(self, n_ctx_seq: int, n_seq: int, n_batch: int):
        """A context of at least ``n_seq`` sequences of ``n_ctx_seq`` cells each taking batches of ``n_batch``
        tokens (the live one when it is big enough), its memory cleared."""
        lib, handles = self.lib, self._handles
        have = self._ctx_size
        if handles.ctx is None or n_ctx_seq > have[0] or n_seq > have[1] or n_batch > have[2]:
            handles.free_context()
            size = (max(n_ctx_seq, have[0]), max(n_seq, have[1]), max(n_batch, have[2]))
            params = lib.llama_context_default_params()
            # n_ctx is shared by the sequences: each of the n_seq_max streams gets n_ctx / n_seq_max cells
            params.n_ctx, params.n_seq_max, params.n_batch = size[0] * size[1], size[1], size[2]
            params.n_ubatch = min(size[2], 512)
            params.n_threads = params.n_threads_batch = self.threads
            params.kv_unified = False  # a KV stream per sequence (see the module docstring)
            params.no_perf = True
            if self.mode == "f32":  # no F16 anywhere: F32 KV cache, and no flash attention (its CPU kernel
                params.type_k = params.type_v = lib.GGML_TYPE_F32  # rounds Q and V to F16 even for an F32 cache)
                params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
            for key, value in self.context_overrides.items():
                setattr(params, key, value)
            ctx = lib.llama_init_from_model(handles.model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context ({size[1]} sequences of {size[0]} "
                                   f"tokens) for the model {self.model_path}.{_recent_log()}")
            handles.ctx = ctx
            handles.batch = lib.llama_batch_init(size[2], 0, 1)
            self._ctx_size = size
            if handles.adapter is not None:
                self._set_adapter()
        lib.llama_memory_clear(lib.llama_get_memory(handles.ctx), True)
        return handles.ctx

    def _decode(self, ctx, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """One llama_decode of ``entries`` (token, position, sequence, wants logits); the batch indices of the
        entries that want logits."""
        batch = self._handles.batch
        outputs = []
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
            if logits:
                outputs.append(i)
        batch.n_tokens = len(entries)
        code = self.lib.llama_decode(ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with {code}: {DECODE_ERRORS.get(code, 'error')}.{_recent_log()}")
        return outputs

    def _logits(self, ctx, outputs: list[int], out: np.ndarray) -> np.ndarray:
        """The engine's logits [len(outputs), V] float32 of the batch indices ``outputs``."""
        V = self.n_vocab
        for k, i in enumerate(outputs):
            pointer = self.lib.llama_get_logits_ith(ctx, i)
            if not pointer:
                raise RuntimeError(f"llama.cpp returned no logits for batch entry {i}.{_recent_log()}")
            out[k] = np.ctypeslib.as_array(pointer, shape=(V,))
        return out[:len(outputs)]

    # ------------------------------------------------------------------------------------------- sampling
    def generate(self, prompts: list[list[int]], group_size: int, max_new_tokens: int,
                 sampling: SamplingParams) -> RolloutBatch:
        """``group_size`` responses per prompt sampled by llama.cpp, rows of a group consecutive, with log mu of
        every sampled token (see the module docstring)."""
        temperature, top_p, k = sampling.temperature, sampling.top_p, sampling.top_k_logprobs
        check_generate_args(prompts, group_size, max_new_tokens, temperature, top_p, k)
        if k > self.n_vocab:
            raise ValueError(f"top_k_logprobs={k} exceeds the vocabulary size {self.n_vocab}")
        self._check_lengths(prompts, max_new_tokens)
        generator = sampling.generator if sampling.generator is not None else self._generator
        groups = [(p, group_size) for p in prompts]
        rows = self._run(groups, max_new_tokens, sampling, generator)
        return self._batch(prompts, group_size, rows, sampling)

    def score(self, batch: RolloutBatch, temperature: float = 1.0, top_p: float = 1.0,
              one_at_a_time: bool = False) -> torch.Tensor:
        """log mu [N, T] float32 of ``batch``'s response tokens under the served weights (0 on padding): the
        responses fed to the engine as if sampled. Rows sharing a group decode as :meth:`generate` decodes them
        (one prompt, copied), all groups batched; ``one_at_a_time`` decodes every row alone in its own context
        pass instead (the engine without batching)."""
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch.prompt_ids, batch.prompt_mask, strict=True)]
        responses = [ids[mask.bool()].tolist() for ids, mask in zip(batch.response_ids, batch.response_mask,
                                                                     strict=True)]
        T = batch.response_ids.shape[1]
        if not all(responses):
            raise ValueError("score needs at least one response token in every row")
        self._check_lengths(prompts, T)
        self._check_lengths(responses, 0)  # the response tokens are in the vocabulary too
        sampling = SamplingParams(eos_id=-1, pad_id=0, temperature=temperature, top_p=top_p, ignore_eos=True)
        groups: list[tuple[list[int], int]] = []
        forced: list[list[int]] = []
        group_index = batch.group_index.tolist()
        for row, prompt in enumerate(prompts):
            if not one_at_a_time and row and group_index[row] == group_index[row - 1]:
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((prompt, 1))
            forced.append(responses[row])
        out = torch.zeros(len(prompts), T)
        if one_at_a_time:
            for row, (prompt, _) in enumerate(groups):
                result = self._run([(prompt, 1)], T, sampling, None, [forced[row]])
                out[row, :len(result[0][2])] = torch.tensor(result[0][2])
            return out
        for row, (_, _, log_probs, _, _) in enumerate(self._run(groups, T, sampling, None, forced)):
            out[row, :len(log_probs)] = torch.tensor(log_probs)
        return out

    def _check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.shape.context_length:
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                             f"context of {self.shape.context_length} tokens (llama.context_length)")
        bad = [t for p in prompts for t in p if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary of {self.n_vocab} tokens")

    def _run(self, groups: list[tuple[list[int], int]], max_new_tokens: int, sampling: SamplingParams,
             generator: torch.Generator | None, forced: list[list[int]] | None = None) -> list[tuple]:
        """Decode ``groups`` [(prompt, sequences)] in chunks of at most llama.cpp's sequence limit; per row
        (tokens, length, log-probs, top-k ids, top-k log-probs), rows of a group consecutive. ``forced``:
        per row the tokens to feed instead of sampling (the row ends after them)."""
        max_seq = int(self.lib.llama_max_parallel_sequences())
        if max(n for _, n in groups) > max_seq:
            raise ValueError(f"group_size exceeds llama.cpp's {max_seq} sequences per context")
        rows: list[tuple] = []
        start = 0
        while start < len(groups):
            chunk, n_seq = [], 0
            while start < len(groups) and n_seq + groups[start][1] <= max_seq:
                chunk.append(groups[start])
                n_seq += groups[start][1]
                start += 1
            chunk_forced = None if forced is None else forced[len(rows):len(rows) + n_seq]
            rows += self._run_chunk(chunk, max_new_tokens, sampling, generator, chunk_forced)
        return rows

    def _run_chunk(self, groups, max_new_tokens, sampling, generator, forced) -> list[tuple]:
        temperature, top_p, k = sampling.temperature, sampling.top_p, sampling.top_k_logprobs
        starts = np.cumsum([0] + [n for _, n in groups])  # first sequence of each group
        N = int(starts[-1])
        n_batch = max(sum(len(p) for p, _ in groups), N)
        ctx = self._context(max(len(p) for p, _ in groups) + max_new_tokens, N, n_batch)
        memory = self.lib.llama_get_memory(ctx)
        buffer = np.empty((N, self.n_vocab), dtype=np.float32)

        # the prompts, once each (sequence = its group's first row), then copied to the rest of the group
        entries = [(token, pos, int(starts[g]), pos == len(prompt) - 1)
                   for g, (prompt, _) in enumerate(groups) for pos, token in enumerate(prompt)]
        outputs = self._decode(ctx, entries)
        prompt_logits = self._logits(ctx, outputs, buffer)
        for g, (_, n) in enumerate(groups):
            for row in range(int(starts[g]) + 1, int(starts[g]) + n):
                self.lib.llama_memory_seq_cp(memory, int(starts[g]), row, -1, -1)
        row_group = np.repeat(np.arange(len(groups)), [n for _, n in groups])
        logits = prompt_logits[row_group]  # [N, V] each row's next-token logits
        position = np.array([len(groups[g][0]) for g in row_group])  # [N] position of each row's next token

        tokens, alive_masks, log_probs, topk_ids, topk_log_probs = [], [], [], [], []
        done = torch.zeros(N, dtype=torch.bool)
        alive_rows = list(range(N))  # rows whose logits are in `logits`, in order
        for step in range(max_new_tokens):
            if self.logits_hook is not None:
                self.logits_hook(list(alive_rows), logits.copy())
            # [n_alive, V] float64; greedy (temperature 0) reports the log-probs at temperature 1, as the native sampler
            log_p = sampling_log_probs(torch.from_numpy(logits).double(), *((temperature, top_p) if temperature else ()))
            if forced is not None:
                token_alive = torch.tensor([forced[r][step] for r in alive_rows], dtype=torch.long)
            elif temperature == 0:
                token_alive = log_p.argmax(-1)
            else:
                # one uniform per row and step, finished rows included: the stream advances the same way whatever
                # the rows do (as the native sampler's)
                device = generator.device if generator is not None else "cpu"
                uniform = torch.rand(N, dtype=torch.float64, generator=generator, device=device).cpu()
                token_alive = sample_inverse_cdf(log_p, uniform[alive_rows])
            token = torch.full((N,), sampling.pad_id, dtype=torch.long)
            token[alive_rows] = token_alive
            chosen = torch.zeros(N, dtype=torch.float64)
            chosen[alive_rows] = log_p.gather(-1, token_alive[:, None])[:, 0]
            alive = ~done
            tokens.append(token)
            alive_masks.append(alive.float())
            log_probs.append(chosen.float())
            if k:
                values, ids = log_p.topk(k, dim=-1)
                step_ids = torch.full((N, k), sampling.pad_id, dtype=torch.long)
                step_values = torch.zeros(N, k)
                step_ids[alive_rows] = ids
                step_values[alive_rows] = values.clamp(min=TOPK_LOG_PROB_FLOOR).float()
                topk_ids.append(step_ids)
                topk_log_probs.append(step_values)
            if forced is not None:
                done = done | torch.tensor([step + 1 >= len(f) for f in forced])
            elif not sampling.ignore_eos:
                done = done | (token == sampling.eos_id)
            if sampling.stop is not None and forced is None:
                done = done | sampling.stop.ended(tokens, alive)
            if done.all() or step == max_new_tokens - 1:
                break
            alive_rows = (~done).nonzero()[:, 0].tolist()
            entries = [(int(token[r]), int(position[r]), r, True) for r in alive_rows]
            position[alive_rows] += 1
            logits = self._logits(ctx, self._decode(ctx, entries), buffer)

        token_matrix = torch.stack(tokens, dim=1)
        mask_matrix = torch.stack(alive_masks, dim=1)
        lp_matrix = torch.stack(log_probs, dim=1)
        out = []
        for r in range(N):
            length = int(mask_matrix[r].sum())
            out.append((token_matrix[r, :length].tolist(), length, lp_matrix[r, :length].tolist(),
                        torch.stack(topk_ids, dim=1)[r, :length] if k else None,
                        torch.stack(topk_log_probs, dim=1)[r, :length] if k else None))
        return out

    def _batch(self, prompts, group_size, rows, sampling: SamplingParams) -> RolloutBatch:
        """The RolloutBatch of per-row results: prompts left-padded, responses right-padded with pad_id."""
        N, k = len(rows), sampling.top_k_logprobs
        T = max(length for _, length, *_ in rows)
        unique_ids, unique_mask = left_pad(prompts, sampling.pad_id)
        response_ids = torch.full((N, T), sampling.pad_id, dtype=torch.long)
        response_mask = torch.zeros(N, T)
        log_prob = torch.zeros(N, T)
        topk_ids = torch.full((N, T, k), sampling.pad_id, dtype=torch.long) if k else None
        topk_lp = torch.zeros(N, T, k) if k else None
        for r, (tokens, length, log_probs, ids, values) in enumerate(rows):
            response_ids[r, :length] = torch.tensor(tokens, dtype=torch.long)
            response_mask[r, :length] = 1.0
            log_prob[r, :length] = torch.tensor(log_probs)
            if k:
                topk_ids[r, :length] = ids
                topk_lp[r, :length] = values
        device = sampling.generator.device if sampling.generator is not None else torch.device("cpu")
        batch = RolloutBatch(
            prompt_ids=unique_ids.repeat_interleave(group_size, dim=0),
            prompt_mask=unique_mask.repeat_interleave(group_size, dim=0),
            response_ids=response_ids, response_mask=response_mask, rollout_log_prob=log_prob,
            group_index=torch.arange(len(prompts)).repeat_interleave(group_size),
            rollout_topk_ids=topk_ids, rollout_topk_log_probs=topk_lp)
        if device.type != "cpu":
            batch = RolloutBatch(**{f: None if v is None else v.to(device) for f, v in vars(batch).items()})
        return batch

    # ------------------------------------------------------------------------------------------- records
    def describe(self) -> dict[str, Any]:
        return {
            "engine": ENGINE, "mode": self.mode, "rounds": ROLLOUT_MODES[self.mode].rounds, "lag": self.lag,
            "llama_cpp_python": _package_version(), "llama_cpp": _c_string(self.lib.llama_version()),
            "system_info": _c_string(self.lib.llama_print_system_info()), "threads": self.threads,
            "kv_cache": "f32" if self.mode == "f32" else "f16", "weights": "base + LoRA adapter" if self.source.lora
            else "full GGUF per sync",
        }

    def close(self) -> None:
        """Free llama.cpp's model, context and adapter and delete the GGUF files (also done when collected)."""
        self._finalizer()


# ------------------------------------------------------------------------------------------- the sampler
def sample_inverse_cdf(log_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``log_p`` [n, V]: the first whose CDF exceeds ``uniform`` [n] times the total mass
    (a token of probability 0 is never drawn)."""
    cdf = log_p.exp().cumsum(-1)
    token = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)[:, 0]
    return token.clamp_(max=log_p.shape[-1] - 1)


def _c_string(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _package_version() -> str:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except Exception:  # noqa: BLE001  (metadata is informative only)
        return "unknown"
