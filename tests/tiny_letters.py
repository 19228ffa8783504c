"""A tiny causal LM over ten letters for the adapter tests (TRL, verl, the mismatch dumps): a word-level
tokenizer and a random one-layer Qwen2, built in memory. Real model classes, no download."""

from __future__ import annotations

LETTERS = ["<pad>", "<eos>", "<unk>", *"abcdefghij"]  # ids 0, 1, 2, then a..j


def letter_tokenizer():
    """Whitespace-separated letters, one token each."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(LETTERS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def letter_model(seed: int = 0):
    """A random Qwen2: hidden 16, one layer, untied head."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(LETTERS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config)


def save_letter_model(path: str) -> None:
    """Both, saved with save_pretrained (as verl loads models)."""
    letter_tokenizer().save_pretrained(path)
    letter_model().save_pretrained(path)
