"""transformers backend: batched generation in this process (CPU default, or one GPU).

Prompts are rendered with the tokenizer's chat template, sorted by length and generated in
batches of ``max_batch_size`` with left padding (so every row's last prompt token is adjacent to
its first new token).  One lock serialises model calls: concurrent RPCs queue instead of fighting
over the cores.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from s3core.errors import ConfigError
from s3core.generation.base import Completion, Generator, Message, Usage, cut_at_stop
from s3core.generation.models import resolve_model

__all__ = ["HFGenerator"]

logger = logging.getLogger(__name__)

# Used when a tokenizer has no chat template (a plain base model).
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 matmuls are slow on most CPUs
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"generator.dtype must be auto, float32, bfloat16 or float16, got {dtype!r}") from None


class HFGenerator(Generator):
    backend = "hf"

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        max_batch_size: int = 8,
        max_prompt_tokens: int = 3072,
        dtype: str = "auto",
        device: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch_size < 1 or max_prompt_tokens < 1:
            raise ConfigError("max_batch_size and max_prompt_tokens must be >= 1")
        self.name = name or model
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        path = resolve_model(model, cache_dir)
        self.path = path
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype, self.device))
        self.model.to(self.device)
        self.model.eval()
        if not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = _FALLBACK_TEMPLATE

        eos: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(src, int):
                eos.add(src)
            elif src:
                eos.update(int(x) for x in src)
        if not eos:
            raise ConfigError(f"model {model!r} defines no end-of-sequence token")
        self.eos_ids = sorted(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self._lock = threading.Lock()
        logger.info("hf generator %s loaded from %s on %s in %.1fs", self.name, path, self.device,
                    time.perf_counter() - t0)

    # --- tokens ------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        ids = self._encode(text)
        if len(ids) <= max_tokens:
            return text
        return str(self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True))

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return self._encode(str(text))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.prompt_ids(messages))

    # --- generation --------------------------------------------------------------------------
    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        prompts: list[list[int]] = []
        for conv in conversations:
            ids = self.prompt_ids(conv)
            if len(ids) > self.max_prompt_tokens:
                # Last resort (Answer already cut its documents): keep the end, as vLLM's
                # truncate_prompt_tokens does, so the generation prompt survives.
                logger.warning("prompt of %d tokens cut to the last %d", len(ids), self.max_prompt_tokens)
                ids = ids[-self.max_prompt_tokens:]
            prompts.append(ids)
        usage = Usage(prompt_tokens=sum(len(p) for p in prompts))
        texts = [""] * len(prompts)
        if max_new_tokens <= 0 or not prompts:
            return Completion(texts, usage)
        stops = [s for s in (stop or []) if s]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.max_batch_size):
            chunk = order[start:start + self.max_batch_size]
            t0 = time.perf_counter()
            with self._lock:
                outs, n_new = self._generate_batch([prompts[i] for i in chunk], max_new_tokens, temperature, stops)
            seconds = time.perf_counter() - t0
            for i, text in zip(chunk, outs):
                texts[i] = text
            usage.completion_tokens += n_new
            self.notify(len(chunk), sum(len(prompts[i]) for i in chunk), n_new, seconds)
        return Completion(texts, usage)

    def _generate_batch(
        self, batch: list[list[int]], max_new_tokens: int, temperature: float, stops: list[str]
    ) -> tuple[list[str], int]:
        from s3core.generation.hf_generate import generate_new_tokens

        rows = generate_new_tokens(self.model, self.tokenizer, batch, max_new_tokens=max_new_tokens,
                                   temperature=temperature, stops=stops, pad_id=self.pad_id, eos_ids=self.eos_ids)
        tokenizer = self.tokenizer
        texts: list[str] = []
        n_new = 0
        eos = set(self.eos_ids)
        for row in rows:
            n = len(row)
            for j, tok in enumerate(row):
                if tok in eos or tok == self.pad_id:
                    # an end-of-sequence token was generated too; padding after a stop was not
                    n = j + 1 if tok in eos else j
                    row = row[:j]
                    break
            n_new += n
            text = str(tokenizer.decode(row, skip_special_tokens=True))
            texts.append(cut_at_stop(text, stops)[0])
        return texts, n_new
