"""Rollout modes: one record per ``rollout.precision`` value, saying what it rounds and which engines run it.

The config validates ``rollout.precision`` against the record of the chosen ``rollout.engine``; the engines
read their numerics from it; ``drpo mismatch`` prints ``rounds`` beside each row. This module imports nothing,
so the config reads it without importing torch or an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("native", "vllm", "llamacpp")  # rollout.engine


@dataclass(frozen=True)
class RolloutMode:
    name: str  # the rollout.precision value
    engines: tuple[str, ...]  # the rollout.engine values that run it
    rounds: str  # what it does to the trainer's numerics, in words


ROLLOUT_MODES: dict[str, RolloutMode] = {m.name: m for m in (
    RolloutMode("fp32", ("native", "vllm"), "nothing: the trainer's own numerics"),
    RolloutMode("bf16", ("native", "vllm"), "every weight and activation to bfloat16 (8-bit mantissa)"),
    RolloutMode("fp16", ("native", "vllm"), "every weight and activation to float16 (11-bit mantissa)"),
    RolloutMode("fp8", ("native",), "bf16 model; Linear weights (per tensor) and inputs (per token) to float8_e4m3, "
                "embedding and head bf16"),
    RolloutMode("int8", ("native",), "bf16 model; Linear weights (per output channel) and inputs (per token) to int8, "
                "embedding and head bf16"),
    RolloutMode("fp8_all", ("native",), "fp32 model; every Linear's weights (per tensor) and inputs (per token) to "
                "float8_e4m3, tied embedding and output head included"),
    RolloutMode("f32", ("llamacpp",), "llama.cpp's own kernels on F32 weights (its reduction order, its attention)"),
    RolloutMode("f16", ("llamacpp",), "llama.cpp with F16 weights: matmul inputs rounded to F16, its own kernels"),
    RolloutMode("q8_0", ("llamacpp",), "llama.cpp with Q8_0 weights (8-bit, one scale per 32) and activations "
                "quantized to Q8_0"),
    RolloutMode("q4_0", ("llamacpp",), "llama.cpp with Q4_0 weights (4-bit, one scale per 32) and activations "
                "quantized to Q8_0"),
)}


def modes_of(engine: str) -> tuple[str, ...]:
    """The rollout.precision values ``engine`` runs."""
    return tuple(name for name, mode in ROLLOUT_MODES.items() if engine in mode.engines)


def default_mode(engine: str) -> str:
    """rollout.precision when a config names the engine but no precision: bf16, or llama.cpp's f16."""
    return "f16" if engine == "llamacpp" else "bf16"
