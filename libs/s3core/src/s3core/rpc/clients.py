"""Typed gRPC clients.  They set deadlines, wait for health, and turn ``grpc.RpcError`` into
:mod:`s3core.errors` so callers (the CLI, the eval pipeline, other services) never see raw gRPC."""

from __future__ import annotations

import time
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import common_pb2, generator_pb2, generator_pb2_grpc, retriever_pb2, retriever_pb2_grpc
from s3core.errors import Unavailable
from s3core.rpc.convert import doc_to_pb, docs_from_pb
from s3core.rpc.errors import from_rpc_error
from s3core.types import Doc

_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class _Client:
    service = ""

    def __init__(self, address: str, timeout: float = 120.0) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address, options=_OPTIONS)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server's health check says SERVING (its index or model is loaded)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = self._health.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=5.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                last = exc.code().name if hasattr(exc, "code") else str(exc)
            time.sleep(0.2)
        raise Unavailable(f"{self.service} at {self.address} not serving after {timeout:.0f}s (last: {last})")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RetrieverClient(_Client):
    service = "s3.v1.Retriever"

    def __init__(self, address: str, timeout: float = 120.0) -> None:
        super().__init__(address, timeout)
        self._stub = retriever_pb2_grpc.RetrieverStub(self.channel)

    def search(self, queries: Sequence[str], k: int, index: str = "") -> list[list[Doc]]:
        try:
            resp = self._stub.Search(
                retriever_pb2.SearchRequest(queries=list(queries), k=k, index=index), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"retriever {self.address} Search") from None
        return [docs_from_pb(hits.documents) for hits in resp.results]

    def list_indexes(self) -> retriever_pb2.ListIndexesResponse:
        try:
            return self._stub.ListIndexes(retriever_pb2.ListIndexesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"retriever {self.address} ListIndexes") from None


class GeneratorClient(_Client):
    service = "s3.v1.Generator"

    def __init__(self, address: str, timeout: float = 600.0) -> None:
        super().__init__(address, timeout)
        self._stub = generator_pb2_grpc.GeneratorStub(self.channel)

    def answer(self, items: Sequence[tuple[str, Sequence[Doc]]], max_new_tokens: int = 0) -> generator_pb2.AnswerResponse:
        req = generator_pb2.AnswerRequest(
            items=[generator_pb2.AnswerItem(question=q, documents=[doc_to_pb(d) for d in docs]) for q, docs in items],
            max_new_tokens=max_new_tokens,
        )
        try:
            return self._stub.Answer(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"generator {self.address} Answer") from None

    def judge(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> generator_pb2.JudgeResponse:
        req = generator_pb2.JudgeRequest(
            items=[generator_pb2.JudgeItem(question=q, response=r, golden_answers=list(g)) for q, r, g in items]
        )
        try:
            return self._stub.Judge(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"generator {self.address} Judge") from None

    def model_info(self) -> generator_pb2.ModelInfoResponse:
        try:
            return self._stub.ModelInfo(generator_pb2.ModelInfoRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"generator {self.address} ModelInfo") from None


__all__ = ["RetrieverClient", "GeneratorClient", "common_pb2"]
