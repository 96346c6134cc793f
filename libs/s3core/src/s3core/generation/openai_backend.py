"""Any OpenAI-compatible chat endpoint (``vllm serve``, a hosted API) over plain HTTP.

Standard library only (:class:`~s3core.generation.openai_http.JSONClient`: keep-alive connections,
retries with exponential backoff, timeouts).  A batch becomes concurrent
``POST {base_url}/chat/completions`` requests on one thread pool of ``max_batch_size`` workers that
every caller of this generator shares, so concurrent callers' conversations are in flight together
and the server (vLLM's continuous batching) batches them; no caller waits for another's batch.
Connection failures, timeouts and 408/429/5xx answers are retried, then raise
:class:`~s3core.errors.Unavailable`; other 4xx answers raise :class:`~s3core.errors.InvalidArgument`
with the endpoint's message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from s3core.errors import ConfigError, Unavailable
from s3core.generation.base import Completion, Generator, Message, Usage, cut_at_stop
from s3core.generation.openai_http import JSONClient

__all__ = ["OpenAIGenerator"]

logger = logging.getLogger(__name__)


class OpenAIGenerator(Generator):
    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "",
        *,
        api_key: str | None = None,
        max_batch_size: int = 8,
        max_prompt_tokens: int = 3072,
        timeout: float = 120.0,
        retries: int = 3,
    ) -> None:
        super().__init__()
        if not base_url:
            raise ConfigError("the openai backend needs generator.base_url, e.g. http://vllm:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"generator.base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._model = model
        self.name = model
        self.api_key = api_key
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.timeout = timeout
        self.http = JSONClient(self.base_url, api_key=api_key, timeout=timeout, retries=retries,
                               max_idle=max(1, max_batch_size), what="generator endpoint")
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_batch_size), thread_name_prefix="s3-openai")
        self._model_lock = threading.Lock()

    # --- HTTP --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.http.request(method, path, body)

    @property
    def model(self) -> str:
        """The model name sent with each request; asked from ``GET /models`` when not configured."""
        with self._model_lock:
            if not self._model:
                listing = self._request("GET", "/models")
                try:
                    self._model = str(listing["data"][0]["id"])
                except (KeyError, IndexError, TypeError):
                    raise Unavailable(f"{self.base_url}/models lists no model; set generator.model") from None
                if not self.name:
                    self.name = self._model
            return self._model

    def _one(self, messages: Sequence[Message], max_new_tokens: int, temperature: float,
             stop: list[str]) -> tuple[str, int, int]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": max_new_tokens,
            "temperature": float(temperature),
        }
        if stop:
            body["stop"] = stop
        out = self._request("POST", "/chat/completions", body)
        try:
            text = out["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Unavailable(f"{self.base_url}/chat/completions answered without choices[0].message") from None
        usage = out.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or self.count_prompt_tokens(messages))
        completion_tokens = int(usage.get("completion_tokens") or self.count_tokens(text))
        # Endpoints honour "stop" already; cutting again is harmless and covers those that don't.
        return cut_at_stop(str(text), stop)[0], prompt_tokens, completion_tokens

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
        stops = [s for s in (stop or []) if s]
        _ = self.model  # resolve once before fanning out
        t0 = time.perf_counter()
        futures = [self._pool.submit(self._one, c, max_new_tokens, temperature, stops) for c in conversations]
        results = [f.result() for f in futures]
        usage = Usage(sum(r[1] for r in results), sum(r[2] for r in results))
        self.notify(len(results), usage.prompt_tokens, usage.completion_tokens, time.perf_counter() - t0)
        return Completion([r[0] for r in results], usage)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def api_key_from_env(var: str) -> str | None:
    """The API key from environment variable ``var`` (None when unset or empty)."""
    return os.environ.get(var) or None
