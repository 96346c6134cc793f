"""A tiny Qwen2-style causal LM and a BPE tokenizer trained on the spot.

Used by tests, benchmarks and smoke runs where a real checkpoint would be too slow or is not
available (no model hub here).  The folder written is a normal Hugging Face model folder
(``config.json``, safetensors weights, tokenizer files with a chat template), so every backend
that loads a model path -- the searcher's hf policy, the learner, ``LoadPolicy`` -- accepts it.
Building one takes well under a second on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from s3core.io import atomic_dir

__all__ = ["DEFAULT_SPECIALS", "build_tiny_model", "train_tiny_tokenizer"]

DEFAULT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _default_corpus() -> list[str]:
    from s3core.search.prompts import FALLBACK_CHAT_TEMPLATE, searcher_messages

    msgs = searcher_messages("Which planet orbits the Sun fastest?", "Doc 1 (Title: Mercury) Mercury orbits.",
                             select_max=3, max_turns=3)
    return [m["content"] for m in msgs] + [
        FALLBACK_CHAT_TEMPLATE,
        '<important_info>[1, 2]</important_info><search_complete>false</search_complete>'
        '<query>{"query": "planet orbit Sun"}</query>',
        "<search_complete>true</search_complete>",
        "The answer is Mercury. Paris is the capital of France.",
    ]


def train_tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from s3core.search.prompts import FALLBACK_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=DEFAULT_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(texts) if texts is not None else _default_corpus()
    tok.train_from_iterator(corpus * 3, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None)
    hf.chat_template = FALLBACK_CHAT_TEMPLATE
    return hf


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, vocab_size: int = 512, texts: Iterable[str] | None = None,
                     intermediate_size: int | None = None, max_position_embeddings: int = 4096) -> Path:
    """Write a randomly initialised Qwen2 model + trained tokenizer to ``out_dir`` (atomically)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tiny_tokenizer(texts, vocab_size=vocab_size)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=int(hidden_size), num_hidden_layers=int(num_layers),
        num_attention_heads=int(num_heads), num_key_value_heads=int(num_heads),
        intermediate_size=int(intermediate_size or 2 * hidden_size),
        max_position_embeddings=int(max_position_embeddings), tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out
