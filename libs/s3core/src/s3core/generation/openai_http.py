"""JSON over HTTP to an OpenAI-compatible endpoint (vLLM serve, a hosted API), standard library only.

Shared by the generator's ``openai`` backend and the searcher's ``openai`` policy.  Errors map to
domain errors once: 4xx (but 408/429) → InvalidArgument, other failures → Unavailable.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from s3core.errors import InvalidArgument, Unavailable


def request_json(base_url: str, method: str, path: str, body: dict[str, Any] | None = None, *,
                 api_key: str = "", timeout: float = 120.0, what: str = "endpoint") -> Any:
    url = f"{base_url}{path}"
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise InvalidArgument(f"{what} {url} refused the request ({exc.code}): {detail}") from None
        raise Unavailable(f"{what} {url} failed ({exc.code}): {detail}") from None
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as exc:
        raise Unavailable(f"{what} {url} cannot be reached: {getattr(exc, 'reason', exc)}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Unavailable(f"{what} {url} answered with something that is not JSON") from None
