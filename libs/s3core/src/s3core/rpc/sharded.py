"""Client-side fan-out over the per-shard retriever services of one sharded index.

A retriever address may list several servers, ``"host0:50051,host1:50051"``: the servers of one
sharded index, each serving one shard directory (its ``ListIndexes`` carries the shard block in
``params_json["shard"]``).  :class:`ShardedRetrieverClient` has the surface of
:class:`~s3core.rpc.clients.RetrieverClient` (``search``, ``list_indexes``, ``wait_ready``,
``close``, ``address``, ``timeout``):

* on first use it lists every server's indexes and checks that the shards form one complete set
  (:func:`s3core.retrieval.shards.check_shard_set`: same ``set_id``, every shard once, contiguous
  rows, same corpus / backend / encoder); a server with no shard, or an incomplete or mixed set, is
  an :class:`~s3core.errors.InvalidArgument` naming the server;
* ``search`` sends the query batch to every shard at once (gRPC futures, no thread per call) and
  merges the ranked lists with :func:`s3core.retrieval.shards.merge_ranked_lists` on
  (score desc, global row asc);
* if any shard is unreachable, not serving or past its deadline, ``search`` raises
  :class:`~s3core.errors.Unavailable` (which :class:`~s3core.rpc.retry.RetryingSearch` retries) and
  forgets the layout, so the set is checked again on the next call -- never partial results.

:func:`s3core.rpc.clients.retriever_client` picks this class for an address with several entries.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from s3.v1 import retriever_pb2, retriever_pb2_grpc
from s3core.errors import InvalidArgument, NotFound, S3Error, Unavailable
from s3core.retrieval.base import IndexInfo
from s3core.retrieval.shards import SHARD_KEY, check_shard_set, logical_info, merge_ranked_lists, shard_block
from s3core.rpc.convert import docs_from_pb
from s3core.rpc.errors import from_rpc_error
from s3core.types import Doc

__all__ = ["ShardedRetrieverClient", "parse_retriever_addresses"]


def parse_retriever_addresses(address: str | Sequence[str]) -> list[str]:
    """``"a:1,b:2"`` (or a list) → ``["a:1", "b:2"]``; empty entries and repeats are errors."""
    if isinstance(address, str):
        raw = address.split(",")
        shown = address
    else:
        raw = [str(a) for a in address]
        shown = ",".join(raw)
    if not shown.strip():
        raise InvalidArgument("retriever address is empty (expected host:port, or host:port,host:port,... "
                              "for the shard servers of a sharded index)")
    out: list[str] = []
    for i, a in enumerate(raw):
        a = a.strip()
        if not a:
            raise InvalidArgument(f"retriever address {shown!r}: entry {i + 1} is empty (stray comma?)")
        if a in out:
            raise InvalidArgument(f"retriever address {shown!r}: {a!r} is listed twice (each shard server once)")
        out.append(a)
    return out


@dataclass(frozen=True)
class _Logical:
    """One sharded index as seen through the shard servers."""

    info: retriever_pb2.IndexInfo  # the logical index (as one server holding every shard would list it)
    servers: tuple[int, ...]  # client position of shard 0, 1, ... (set order)
    names: tuple[str, ...]  # each shard's index name on its server
    row_offsets: tuple[int, ...]


@dataclass(frozen=True)
class _Layout:
    by_name: dict[str, _Logical]
    default: str


def _info_of(pb: retriever_pb2.IndexInfo, params: dict[str, Any]) -> IndexInfo:
    return IndexInfo(name=pb.name, backend=pb.backend, num_documents=int(pb.num_documents),
                     corpus_sha256=pb.corpus_sha256, encoder=pb.encoder, params=params)


class ShardedRetrieverClient:
    """The retriever client over the shard servers of one sharded index (see the module doc)."""

    service = "s3.v1.Retriever"

    def __init__(self, addresses: str | Sequence[str], timeout: float = 120.0) -> None:
        from s3core.rpc.clients import RetrieverClient

        self.addresses = parse_retriever_addresses(addresses)
        self.address = ",".join(self.addresses)
        self.timeout = timeout
        self.clients = [RetrieverClient(a, timeout=timeout) for a in self.addresses]
        self._stubs = [retriever_pb2_grpc.RetrieverStub(c.channel) for c in self.clients]
        self._layout: _Layout | None = None
        self._lock = threading.Lock()
        self._building = threading.Lock()  # one set check at a time (concurrent first calls share it)

    # --- the set ---------------------------------------------------------------------------------

    def _list_all(self) -> list[retriever_pb2.ListIndexesResponse]:
        calls = [s.ListIndexes.future(retriever_pb2.ListIndexesRequest(), timeout=self.timeout) for s in self._stubs]
        return self._gather(calls, "ListIndexes", range(len(calls)))

    def _gather(self, calls: list[Any], method: str, servers: Sequence[int]) -> list[Any]:
        """Results of the shard calls in order; the first failure cancels the rest and is raised (an
        Unavailable one also forgets the layout, so the set is checked again on the next call)."""
        out: list[Any] = []
        for i, call in enumerate(calls):
            try:
                out.append(call.result())
            except grpc.RpcError as exc:
                for c in calls[i + 1:]:
                    c.cancel()
                err: S3Error = from_rpc_error(exc, f"retriever shard server {self.addresses[servers[i]]} {method}")
                if isinstance(err, Unavailable):
                    self._forget()
                raise err from None
        return out

    def _forget(self) -> None:
        with self._lock:
            self._layout = None

    def _build_layout(self) -> _Layout:
        listings = self._list_all()
        found: dict[str, list[tuple[int, retriever_pb2.IndexInfo, dict[str, Any], dict[str, Any]]]] = {}
        default_set: str | None = None
        for ci, listing in enumerate(listings):
            here = 0
            for pb in listing.indexes:
                try:
                    params = json.loads(pb.params_json) if pb.params_json else {}
                except ValueError:
                    params = {}
                if not isinstance(params, dict):
                    continue
                block = shard_block({"name": pb.name, "num_documents": int(pb.num_documents),
                                     SHARD_KEY: params.get(SHARD_KEY)},
                                    f"index {pb.name!r} of retriever {self.addresses[ci]}")
                if block is None:
                    continue
                here += 1
                params = {k: v for k, v in params.items() if k != SHARD_KEY}
                found.setdefault(block["set_id"], []).append((ci, pb, params, block))
                if ci == 0 and pb.name == listing.default_index:
                    default_set = block["set_id"]
            if not here:
                names = ", ".join(i.name for i in listing.indexes) or "none"
                raise InvalidArgument(
                    f"retriever {self.addresses[ci]} serves no index shard (indexes: {names}); a retriever address "
                    f"with several entries ({self.address}) must list the shard servers of one sharded index")
        if default_set is None:
            raise InvalidArgument(f"the default index of retriever {self.addresses[0]} is not a shard; a retriever "
                                  f"address with several entries ({self.address}) must list shard servers")
        by_name: dict[str, _Logical] = {}
        default = ""
        for sid, entries in found.items():
            manifests = [{"format_version": 1, "name": pb.name, "backend": pb.backend,
                          "num_documents": int(pb.num_documents), "corpus_sha256": pb.corpus_sha256,
                          "encoder": pb.encoder, "params": params, SHARD_KEY: block}
                         for _, pb, params, block in entries]
            try:
                check_shard_set(manifests)
                servers = {ci for ci, *_ in entries}
                if len(servers) != len(self.addresses):
                    lacking = [self.addresses[i] for i in range(len(self.addresses)) if i not in servers]
                    raise InvalidArgument(f"server(s) {', '.join(lacking)} hold no shard of it")
            except InvalidArgument as exc:
                if sid == default_set:
                    where = ", ".join(f"shard {b['index']} of {b['count']} at {self.addresses[ci]}"
                                      for ci, _, _, b in entries)
                    raise InvalidArgument(f"retriever shard servers {self.address} do not form one complete shard "
                                          f"set {sid} ({where}): {exc}") from None
                continue  # another, partial set on these servers: not offered
            entries = sorted(entries, key=lambda e: e[3]["index"])
            info = logical_info([_info_of(pb, params) for _, pb, params, _ in entries], [e[3] for e in entries])
            pb_info = retriever_pb2.IndexInfo(
                name=info.name, backend=info.backend, num_documents=info.num_documents,
                corpus_sha256=info.corpus_sha256, encoder=info.encoder,
                params_json=json.dumps(info.params, sort_keys=True, ensure_ascii=False))
            if info.name in by_name:
                raise InvalidArgument(f"two shard sets on {self.address} are both named {info.name!r}")
            by_name[info.name] = _Logical(pb_info, tuple(e[0] for e in entries), tuple(e[1].name for e in entries),
                                          tuple(int(e[3]["row_start"]) for e in entries))
            if sid == default_set:
                default = info.name
        return _Layout(by_name, default)

    def _get_layout(self) -> _Layout:
        layout = self._layout
        if layout is None:
            with self._building:
                layout = self._layout
                if layout is None:
                    layout = self._build_layout()
                    with self._lock:
                        self._layout = layout
        return layout

    # --- RetrieverClient's surface ---------------------------------------------------------------

    def list_indexes(self) -> retriever_pb2.ListIndexesResponse:
        """The sharded index(es) as one server holding every shard would list them."""
        layout = self._get_layout()
        return retriever_pb2.ListIndexesResponse(indexes=[x.info for x in layout.by_name.values()],
                                                 default_index=layout.default)

    def search(self, queries: Sequence[str], k: int, index: str = "") -> list[list[Doc]]:
        """Fan ``queries`` out to every shard, merge each query's lists into the global top-``k``."""
        layout = self._get_layout()
        name = index or layout.default
        logical = layout.by_name.get(name)
        if logical is None:
            raise NotFound(f"unknown index {index!r} on retriever shard servers {self.address} "
                           f"(sharded indexes: {', '.join(layout.by_name)})")
        qs = list(queries)
        calls = [self._stubs[ci].Search.future(retriever_pb2.SearchRequest(queries=qs, k=k, index=shard_name),
                                               timeout=self.timeout)
                 for ci, shard_name in zip(logical.servers, logical.names)]
        responses = self._gather(calls, "Search", logical.servers)
        lists: list[list[list[Doc]]] = []
        for ci, shard_name, resp in zip(logical.servers, logical.names, responses):
            if resp.index != shard_name or len(resp.results) != len(qs):
                self._forget()
                raise Unavailable(f"retriever shard server {self.addresses[ci]} answered for index {resp.index!r} "
                                  f"with {len(resp.results)} result lists (expected {shard_name!r}, {len(qs)}); "
                                  "the shard set changed, checking it again")
            lists.append([docs_from_pb(h.documents) for h in resp.results])
        return merge_ranked_lists(lists, k, logical.row_offsets)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until every shard server reports SERVING (Unavailable naming the first that does not)."""
        deadline = time.monotonic() + timeout
        for c in self.clients:
            c.wait_ready(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def __enter__(self) -> ShardedRetrieverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
