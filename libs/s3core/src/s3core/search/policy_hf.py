"""A searcher :class:`~s3core.search.episode.Policy` on transformers (CPU, or one GPU).

Prompts arrive as token ids, are sorted by length and generated in batches of ``max_batch_size``
with left padding.  ``temperature > 0`` samples (top-k and top-p off: the plain softmax, which is
what PPO/GRPO assume); ``temperature == 0`` is greedy.  Sampling is reproducible: each ``generate``
call seeds torch from ``(seed, call number)`` inside :func:`torch.random.fork_rng`, so the global
random state of the process is left untouched.  Stop strings end a row early (a stopping criterion)
and are then cut at the token level (:func:`~s3core.search.episode.cut_tokens`), as is an
end-of-sequence token (kept) and the padding after it (dropped).
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from s3core.errors import ConfigError
from s3core.search.episode import cut_tokens

__all__ = ["HFPolicy"]


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}") from None


class HFPolicy:
    """Batched left-padded generation with a transformers causal LM."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        seed: int = 0,
        max_batch_size: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        version: int = 0,
        name: str = "",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.version = int(version)
        self.name = name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "hf")
        self.max_batch_size = int(max_batch_size)  # 0 = all prompts of a call in one batch
        eos: set[int] = set(int(i) for i in (eos_token_ids or []))
        gen_cfg = getattr(model, "generation_config", None)
        for src in (getattr(gen_cfg, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(src)
            elif src:
                eos.update(int(x) for x in src)
        if not eos:
            raise ConfigError("the policy model defines no end-of-sequence token")
        self.eos_token_ids = sorted(eos)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_token_ids[0]
        self._seed = int(seed)
        self._calls = 0
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path: str, *, dtype: str = "auto", device: str | None = None, **kwargs: Any
    ) -> HFPolicy:
        """Load a model folder or hub name (tokenizer and weights) onto ``device``."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype, dev))
        model.to(dev)
        model.eval()
        kwargs.setdefault("name", path)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def set_seed(self, seed: int) -> None:
        with self._lock:
            self._seed = int(seed)
            self._calls = 0

    def generate(
        self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]
    ) -> list[list[int]]:
        prompts = [list(map(int, p)) for p in batch_token_ids]
        outs: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens <= 0:
            return outs
        stops = [s for s in stop if s]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        size = self.max_batch_size if self.max_batch_size > 0 else len(order)
        with self._lock:
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                rows = self._generate_batch([prompts[i] for i in chunk], max_new_tokens, temperature, stops)
                for i, row in zip(chunk, rows):
                    outs[i] = row
        return outs

    def _generate_batch(
        self, batch: list[list[int]], max_new_tokens: int, temperature: float, stops: list[str]
    ) -> list[list[int]]:
        import torch

        from s3core.generation.hf_generate import generate_new_tokens

        device = self.device
        self._calls += 1
        seed = (self._seed * 1_000_003 + self._calls) % (2**63 - 1)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
            torch.manual_seed(seed)
            rows = generate_new_tokens(self.model, self.tokenizer, batch, max_new_tokens=max_new_tokens,
                                       temperature=temperature, stops=stops, pad_id=self.pad_id,
                                       eos_ids=self.eos_token_ids, skip_special=False)
        eos = set(self.eos_token_ids)
        return [cut_tokens(self.tokenizer, row, stops, eos) for row in rows]
