"""A searcher :class:`~s3core.search.episode.Policy` on in-process vLLM (GPU extra).

``vllm`` is imported only in the constructor.  Prompts go in as token ids (``TokensPrompt``), so
what the policy conditions on is exactly the engine's token sequence, and the generated token ids
come back untouched (vLLM keeps the tokens that complete a stop string; the engine cuts after
them).  Sampling is the plain softmax (no top-k / top-p), greedy at temperature 0, and each row gets
its own seed derived from ``(seed, call number, row)`` so a batch of episodes is reproducible.
"""

from __future__ import annotations

import threading
from typing import Any

from s3core.errors import ConfigError
from s3core.generation.models import resolve_model

__all__ = ["VLLMPolicy"]


class VLLMPolicy:
    def __init__(
        self,
        model: str,
        *,
        version: int = 0,
        name: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError(
                f"searcher.backend 'vllm' needs the vllm package ({exc}); install the gpu extra: "
                "pip install 's3core[gpu]' (a CUDA machine is required)"
            ) from None
        self._vllm = vllm
        self.name = name or model
        self.version = int(version)
        self.llm = vllm.LLM(
            model=resolve_model(model, cache_dir),
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
        )
        self.tokenizer = self.llm.get_tokenizer()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids = [int(eos)] if isinstance(eos, int) else []
        self._seed = int(seed)
        self._calls = 0
        self._lock = threading.Lock()

    def set_seed(self, seed: int) -> None:
        with self._lock:
            self._seed = int(seed)
            self._calls = 0

    def generate(
        self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]
    ) -> list[list[int]]:
        if not batch_token_ids or max_new_tokens <= 0:
            return [[] for _ in batch_token_ids]
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        with self._lock:
            self._calls += 1
            base = (self._seed * 1_000_003 + self._calls * 65_537) % (2**31 - 1)
            stops = [s for s in stop if s]
            params: list[Any] = [
                SamplingParams(
                    max_tokens=int(max_new_tokens),
                    temperature=float(temperature),
                    stop=stops or None,
                    include_stop_str_in_output=True,
                    seed=(base + row) if temperature > 0 else None,
                )
                for row in range(len(batch_token_ids))
            ]
            prompts = [TokensPrompt(prompt_token_ids=[int(i) for i in ids]) for ids in batch_token_ids]
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    def close(self) -> None:
        self.llm = None
