"""In-process vLLM (GPU profile).  ``vllm`` is imported only here, inside the constructor.

Answer prompts are already cut to ``max_prompt_tokens`` by :mod:`s3core.generation.engine`; a raw
Complete conversation longer than the model's context is refused by vLLM itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Sequence

from s3core.errors import ConfigError
from s3core.generation.base import Completion, Generator, Message, Usage
from s3core.generation.models import resolve_model

__all__ = ["VLLMGenerator"]

logger = logging.getLogger(__name__)


class VLLMGenerator(Generator):
    backend = "vllm"

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        max_batch_size: int = 64,
        max_prompt_tokens: int = 3072,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError(
                f"generator.backend 'vllm' needs the vllm package ({exc}); install the gpu extra: "
                "pip install 's3core[gpu]' (a CUDA machine is required)"
            ) from None
        self._vllm = vllm
        self.name = name or model
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.llm = vllm.LLM(
            model=resolve_model(model, cache_dir),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= max_tokens else str(self.tokenizer.decode(ids[:max_tokens]))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        # Render to text, then encode: tokenize=True returns a dict in newer transformers.
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer.encode(str(text), add_special_tokens=False))

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        if not conversations:
            return Completion([], Usage())
        if max_new_tokens <= 0:
            prompt = sum(self.count_prompt_tokens(c) for c in conversations)
            return Completion([""] * len(conversations), Usage(prompt_tokens=prompt))
        params = self._vllm.SamplingParams(
            temperature=float(temperature),
            max_tokens=max_new_tokens,
            stop=[s for s in (stop or []) if s] or None,
        )
        t0 = time.perf_counter()
        with self._lock:  # vLLM schedules the whole list itself; one call at a time
            outs: list[Any] = self.llm.chat([list(c) for c in conversations], params, use_tqdm=False)
        usage = Usage(
            prompt_tokens=sum(len(o.prompt_token_ids or []) for o in outs),
            completion_tokens=sum(len(o.outputs[0].token_ids) for o in outs),
        )
        self.notify(len(outs), usage.prompt_tokens, usage.completion_tokens, time.perf_counter() - t0)
        return Completion([o.outputs[0].text for o in outs], usage)
