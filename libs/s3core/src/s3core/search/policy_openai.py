"""A searcher :class:`~s3core.search.episode.Policy` over any OpenAI-compatible chat endpoint.

Endpoints that take token-id prompts are rare, so this backend talks text and re-tokenises locally
with a Hugging Face tokenizer.  **Token ids and action masks are therefore approximate** (the
endpoint's tokenisation of its own reply may differ from ours): use it for inference and evaluation
(a hosted model as the searcher), never for training.

An episode becomes a multi-turn chat: the searcher prompt (system + user message), then each turn
as an ``assistant`` message and each observation (information block, feedback) as a ``user``
message.  The engine only hands over token ids, so the conversation is recovered from them:

* the initial prompt is split back into its system and user messages by rendering the tokenizer's
  chat template around two sentinels (when that fails, the whole decoded prompt is one user message);
* every reply is remembered under the exact token ids it ends (prompt + reply); a later prompt that
  extends a remembered sequence is that conversation plus one observation.  The memory is cleared
  by ``set_seed`` (the engine calls it once per batch of episodes) and is bounded.

Replies are cut locally at the engine's stop strings.  The endpoint is only sent the closing-tag
stops (``</query>``, ``</search_complete>``): OpenAI-style endpoints drop the stop string from the
reply, so the one that matched is put back (from vLLM's ``stop_reason`` / SGLang's ``matched_stop``,
else the tag that the reply leaves open).  Standard library HTTP only, with keep-alive connections and
retries with backoff (:class:`~s3core.generation.openai_http.JSONClient`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from s3core.errors import ConfigError, Unavailable
from s3core.generation.openai_http import JSONClient
from s3core.search.episode import cut_tokens, decode, eos_ids_of
from s3core.search.prompts import FALLBACK_CHAT_TEMPLATE, encode

__all__ = ["OpenAIPolicy", "split_chat_prompt"]

_SYS_MARK = "\u0001S3SYSTEM\u0001"
_USER_MARK = "\u0001S3USER\u0001"
MAX_REMEMBERED = 8192


def split_chat_prompt(tokenizer: Any, text: str) -> list[dict[str, str]]:
    """Recover ``[system, user]`` messages from a prompt rendered with the tokenizer's chat template."""
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    try:
        shape = str(tokenizer.apply_chat_template(
            [{"role": "system", "content": _SYS_MARK}, {"role": "user", "content": _USER_MARK}],
            tokenize=False, add_generation_prompt=True, chat_template=template,
        ))
        pre, rest = shape.split(_SYS_MARK, 1)
        mid, post = rest.split(_USER_MARK, 1)
    except Exception:  # noqa: BLE001 - any template oddity: fall back to one user message
        return [{"role": "user", "content": text}]
    if text.startswith(pre) and text.endswith(post) and len(text) >= len(pre) + len(mid) + len(post):
        body = text[len(pre): len(text) - len(post)]
        cut = body.find(mid)
        if cut >= 0:
            return [{"role": "system", "content": body[:cut]}, {"role": "user", "content": body[cut + len(mid):]}]
    return [{"role": "user", "content": text}]


def _put_back_stop(text: str, choice: dict[str, Any], sent: list[str]) -> str:
    """Re-append the stop string the endpoint removed from ``text``."""
    if choice.get("finish_reason") != "stop" or not sent or any(text.endswith(s) for s in sent):
        return text
    for key in ("stop_reason", "matched_stop"):
        matched = choice.get(key)
        if isinstance(matched, str) and matched in sent:
            return text + matched
    for s in sent:  # a closing tag whose opening tag is still open
        opening = "<" + s[2:]
        if text.rfind(opening) > text.rfind(s):
            return text + s
    return text  # a natural end of message


class OpenAIPolicy:
    """Text in, text out over ``POST {base_url}/chat/completions``; token ids via ``tokenizer``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        *,
        api_key: str | None = None,
        max_batch_size: int = 16,
        timeout: float = 300.0,
        version: int = 0,
        seed: int = 0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"searcher.base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ConfigError("the openai searcher backend needs searcher.model (the endpoint's model name)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.timeout = timeout
        self.version = int(version)
        self.eos_token_ids = sorted(eos_ids_of(tokenizer))
        self._seed = int(seed)
        self._calls = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_batch_size or 16), thread_name_prefix="s3-policy-openai")
        self.http = JSONClient(self.base_url, api_key=api_key, timeout=timeout, retries=3,
                               max_idle=max(1, max_batch_size or 16), what="searcher endpoint")
        self._lock = threading.Lock()
        self._known: OrderedDict[tuple[int, ...], list[dict[str, str]]] = OrderedDict()

    # --- HTTP --------------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self.http.request("POST", path, body)

    # --- conversations -----------------------------------------------------------------------
    def set_seed(self, seed: int) -> None:
        with self._lock:
            self._seed = int(seed)
            self._calls = 0
            self._known.clear()

    def messages_for(self, ids: Sequence[int]) -> list[dict[str, str]]:
        """The chat conversation whose next assistant message continues ``ids``."""
        ids = list(ids)
        with self._lock:
            lengths = sorted({len(k) for k in self._known if len(k) <= len(ids)}, reverse=True)
            for n in lengths:
                prev = self._known.get(tuple(ids[:n]))
                if prev is not None:
                    obs = decode(self.tokenizer, ids[n:], skip_special=True).strip()
                    return [*prev, {"role": "user", "content": obs}] if obs else list(prev)
        return split_chat_prompt(self.tokenizer, decode(self.tokenizer, ids, skip_special=False))

    def _remember(self, key: list[int], messages: list[dict[str, str]]) -> None:
        with self._lock:
            self._known[tuple(key)] = messages
            while len(self._known) > MAX_REMEMBERED:
                self._known.popitem(last=False)

    def _one(self, ids: list[int], max_new_tokens: int, temperature: float, stops: list[str], seed: int) -> list[int]:
        messages = self.messages_for(ids)
        sent = [s for s in stops if s.startswith("</")]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": int(max_new_tokens),
            "temperature": float(temperature),
        }
        if sent:
            body["stop"] = sent
        if temperature > 0:
            body["seed"] = seed
        out = self._post("/chat/completions", body)
        try:
            choice = out["choices"][0]
            text = str(choice["message"].get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Unavailable(f"{self.base_url}/chat/completions answered without choices[0].message") from None
        text = _put_back_stop(text, choice, sent)
        action = cut_tokens(self.tokenizer, encode(self.tokenizer, text)[:max_new_tokens], stops)
        self._remember(ids + action, [*messages, {"role": "assistant",
                                                  "content": decode(self.tokenizer, action, skip_special=True)}])
        return action

    def generate(
        self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]
    ) -> list[list[int]]:
        if not batch_token_ids or max_new_tokens <= 0:
            return [[] for _ in batch_token_ids]
        stops = [s for s in stop if s]
        with self._lock:
            self._calls += 1
            base = (self._seed * 1_000_003 + self._calls * 4099) % (2**31 - 1)
        futures = [
            self._pool.submit(self._one, [int(i) for i in ids], max_new_tokens, temperature, stops, base + row)
            for row, ids in enumerate(batch_token_ids)
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()
