"""The Policy contract: what the trainer, the warm-up and evaluation call, whatever the model behind it.

    policy.encode_prompt(example)               # prompt token ids (BOS + characters; a chat template for HF)
    policy.log_probs(batch, temperature, keep_logits)   # log pi [N, T], entropy [N, T], scaled logits [N, T, V]
    policy.generate_text(prompts, samples, max_new_tokens, temperature)   # completions of pi itself (fp32)
    policy.greedy_accuracy(examples)            # fraction the task's verifier accepts

:class:`Policy` holds model + tokenizer + task and implements the contract for the built-in transformer
(drpo/warmup.py builds it); :class:`drpo.models.hf_policy.HFPolicy` subclasses it for Hugging Face models.
drpo/backends.py picks between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from drpo.behavior.base import SamplingParams
from drpo.models.log_probs import SequenceLogProbs, sequence_log_probs
from drpo.models.sampling import RolloutBatch, StopStrings, generate
from drpo.models.tokenizer import CharTokenizer


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: CharTokenizer
    task: object
    base_info: dict = field(default_factory=dict)
    stop: tuple[str, ...] = ()  # rollout.stop: strings that end a response, in rollouts and evaluation alike
    text_engine: str = "trainer"  # eval.engine: what generate_text runs on (llamacpp: pi's weights served in F32)
    _served: object = field(default=None, repr=False)  # that engine, built on first use

    def encode_prompt(self, example) -> list[int]:
        return self.tokenizer.encode(example.prompt, bos=True)

    def stopper(self) -> StopStrings | None:
        return StopStrings(self.stop, self.tokenizer.decode) if self.stop else None

    def decode_responses(self, batch: RolloutBatch) -> list[str]:
        texts = [self.tokenizer.decode(row) for row in batch.response_ids.tolist()]
        return [self.stopper().cut(text) for text in texts] if self.stop else texts

    def log_probs(self, batch: RolloutBatch, temperature: float, keep_logits: bool = False) -> SequenceLogProbs:
        """log pi [N, T], entropy [N, T] and scaled logits [N, T, V] of the batch's responses, with gradients.

        ``keep_logits``: the caller needs the logits (a top-k loss); without it a model that can skip forming
        them does (an HF model, :func:`drpo.models.log_probs.sequence_log_probs`) and ``logits`` is None.
        """
        return sequence_log_probs(self.model, batch, temperature, keep_logits)

    def greedy_accuracy(self, examples: list) -> float:
        """Fraction of ``examples`` whose greedy completion the task's verifier accepts (task=custom: mean reward)."""
        completions = self.generate_text([self.encode_prompt(ex) for ex in examples], 1, self.task.max_response_len,
                                         temperature=0.0)
        accuracy = float(np.nanmean(self.task.score(completions, examples).rewards))
        self.task.verifier_errors(len(examples))  # raises when most failed; a few count as wrong answers here
        return accuracy

    @torch.no_grad()
    def generate_text(self, prompts: list[list[int]], samples: int, max_new_tokens: int, temperature: float,
                      generator: torch.Generator | None = None) -> list[str]:
        """``samples`` completions per prompt from the trained policy itself (fp32, or its current weights served by
        llama.cpp in F32 with ``text_engine="llamacpp"``); temperature 0 is greedy."""
        if self.text_engine == "llamacpp":
            return self.decode_responses(self._llamacpp().generate(prompts, samples, max_new_tokens, SamplingParams(
                eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id, temperature=temperature,
                stop=self.stopper(), generator=generator)))
        was_training = self.model.training
        self.model.eval()
        batch = generate(self.model, prompts, samples, max_new_tokens, temperature, generator=generator,
                         eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id, stop=self.stopper())
        self.model.train(was_training)
        return self.decode_responses(batch)

    def _llamacpp(self):
        """llama.cpp serving the model's weights as they are now (rewritten each call: they change between calls)."""
        if self._served is None:
            # lazy: an optional dependency (llama-cpp-python), imported only when eval.engine asks for it
            from drpo.behavior.llamacpp import LlamaCppBehavior

            self._served = LlamaCppBehavior(self.model, mode="f32")
        else:
            self._served.sync(self.model)
        return self._served
