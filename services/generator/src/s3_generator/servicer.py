"""gRPC servicer of s3.v1.Generator: validation and proto conversion around s3core.generation.

Expected failures raise :mod:`s3core.errors` exceptions; the shared interceptor turns them into
status codes.  Model calls run in worker threads (``asyncio.to_thread``) so the event loop keeps
answering health checks and other RPCs while a batch is generated.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from s3.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from s3_generator.metrics import REQUESTS
from s3core.config import GeneratorConfig
from s3core.errors import InvalidArgument, Unavailable
from s3core.generation import PROMPT_VERSION, Generator, Usage, answer, judge
from s3core.generation.base import VALID_ROLES
from s3core.rpc.convert import docs_from_pb

MAX_NEW_TOKENS_LIMIT = 4096
MAX_TEMPERATURE = 5.0
MAX_STOP_STRINGS = 16


def _usage_pb(u: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, cfg: GeneratorConfig, generator: Generator | None = None) -> None:
        self.cfg = cfg
        self._gen = generator

    # --- state -------------------------------------------------------------------------------
    def set_generator(self, generator: Generator) -> None:
        self._gen = generator

    @property
    def ready(self) -> bool:
        return self._gen is not None

    @property
    def generator(self) -> Generator:
        if self._gen is None:
            raise Unavailable("the generator model is still loading")
        return self._gen

    # --- validation --------------------------------------------------------------------------
    def _check_count(self, n: int, what: str) -> None:
        if n == 0:
            raise InvalidArgument(f"no {what} in the request")
        if n > self.cfg.max_items:
            raise InvalidArgument(f"{n} {what} in one request; at most {self.cfg.max_items} (generator.max_items)")

    @staticmethod
    def _max_new_tokens(value: int, default: int) -> int:
        if value < 0 or value > MAX_NEW_TOKENS_LIMIT:
            raise InvalidArgument(f"max_new_tokens must be in [0, {MAX_NEW_TOKENS_LIMIT}] (0 = default), got {value}")
        return value or default

    @staticmethod
    def _question(text: str, i: int) -> str:
        if not text.strip():
            raise InvalidArgument(f"items[{i}].question is empty")
        return text

    # --- RPCs --------------------------------------------------------------------------------
    async def Answer(self, request: generator_pb2.AnswerRequest, context: Any) -> generator_pb2.AnswerResponse:  # noqa: N802
        REQUESTS.labels("Answer").inc()
        self._check_count(len(request.items), "items")
        max_new = self._max_new_tokens(request.max_new_tokens, self.cfg.max_new_tokens)
        items = [(self._question(it.question, i), docs_from_pb(it.documents)) for i, it in enumerate(request.items)]
        gen = self.generator
        usage = Usage()
        answers = await asyncio.to_thread(answer, gen, items, max_new, usage)
        return generator_pb2.AnswerResponse(
            answers=answers, usage=_usage_pb(usage), prompt_version=PROMPT_VERSION, model=gen.name
        )

    async def Judge(self, request: generator_pb2.JudgeRequest, context: Any) -> generator_pb2.JudgeResponse:  # noqa: N802
        REQUESTS.labels("Judge").inc()
        self._check_count(len(request.items), "items")
        items: list[tuple[str, str, list[str]]] = []
        for i, it in enumerate(request.items):
            golds = [g for g in it.golden_answers if g.strip()]
            if not golds:
                raise InvalidArgument(f"items[{i}] has no golden_answers to judge against")
            items.append((self._question(it.question, i), it.response, golds))
        gen = self.generator
        usage = Usage()
        results = await asyncio.to_thread(judge, gen, items, self.cfg.judge_max_new_tokens, usage)
        return generator_pb2.JudgeResponse(
            correct=[c for c, _ in results], raw=[r for _, r in results], usage=_usage_pb(usage)
        )

    async def Complete(self, request: generator_pb2.CompleteRequest, context: Any) -> generator_pb2.CompleteResponse:  # noqa: N802
        REQUESTS.labels("Complete").inc()
        self._check_count(len(request.conversations), "conversations")
        max_new = self._max_new_tokens(request.max_new_tokens, self.cfg.max_new_tokens)
        temperature = float(request.temperature)
        if not math.isfinite(temperature) or temperature < 0 or temperature > MAX_TEMPERATURE:
            raise InvalidArgument(f"temperature must be in [0, {MAX_TEMPERATURE}] (0 = greedy), got {temperature}")
        if len(request.stop) > MAX_STOP_STRINGS:
            raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings, got {len(request.stop)}")
        if any(not s for s in request.stop):
            raise InvalidArgument("stop strings must not be empty")
        convs: list[list[dict[str, str]]] = []
        for i, conv in enumerate(request.conversations):
            if not conv.messages:
                raise InvalidArgument(f"conversations[{i}] has no messages")
            msgs = []
            for j, m in enumerate(conv.messages):
                if m.role not in VALID_ROLES:
                    raise InvalidArgument(
                        f"conversations[{i}].messages[{j}].role is {m.role!r}; use one of {', '.join(VALID_ROLES)}"
                    )
                msgs.append({"role": m.role, "content": m.content})
            convs.append(msgs)
        gen = self.generator
        out = await asyncio.to_thread(gen.generate, convs, max_new, temperature, list(request.stop))
        return generator_pb2.CompleteResponse(texts=out.texts, usage=_usage_pb(out.usage))

    async def ModelInfo(self, request: generator_pb2.ModelInfoRequest, context: Any) -> generator_pb2.ModelInfoResponse:  # noqa: N802
        REQUESTS.labels("ModelInfo").inc()
        gen = self._gen
        return generator_pb2.ModelInfoResponse(
            model=gen.name if gen is not None else self.cfg.model,
            backend=gen.backend if gen is not None else self.cfg.backend,
            prompt_version=PROMPT_VERSION,
            max_batch_size=gen.max_batch_size if gen is not None else self.cfg.max_batch_size,
        )
