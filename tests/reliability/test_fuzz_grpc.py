"""Bad-input fuzzing of every gRPC method of the five services, and of the retriever's HTTP shim.

Each service runs as a real subprocess on loopback (``conftest.py``).  For every method two
Hypothesis properties run against it:

* **messages**: well-formed but extreme requests built from the protobuf descriptors -- empty,
  repeated fields past the servers' limits, negative and 32/64-bit extreme integers, NaN/inf
  floats, odd strings (NUL, RTL marks, 10k characters, path traversal), out-of-range enum values;
* **raw bytes**: arbitrary bytes, and valid messages whose string fields carry non-UTF-8, sent
  through a generic ``channel.unary_unary(method)`` with no serializer.

The server must answer with a deliberate status (``ALLOWED``) -- never ``UNKNOWN`` / ``INTERNAL``
(an unhandled exception) or a dead process -- and still answer a normal request afterwards.

Examples per property: the "ci" Hypothesis profile (``S3_FUZZ_EXAMPLES``, default 40).  The
>= 10,000-case run: ``S3_FUZZ_EXAMPLES=320 pytest tests/reliability/test_fuzz_grpc.py``; the
counts per method go to ``$S3_FUZZ_REPORT`` (JSON) when set.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _d
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from s3.v1 import controller_pb2, generator_pb2, learner_pb2, retriever_pb2, searcher_pb2

ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED,
}
RPC_TIMEOUT_S = 60.0
STREAM_TIMEOUT_S = 3.0  # a stream that is still open then (e.g. WatchJob of a live job) is fine

SERVICES: dict[str, _d.ServiceDescriptor] = {
    "retriever": retriever_pb2.DESCRIPTOR.services_by_name["Retriever"],
    "generator": generator_pb2.DESCRIPTOR.services_by_name["Generator"],
    "searcher": searcher_pb2.DESCRIPTOR.services_by_name["Searcher"],
    "learner": learner_pb2.DESCRIPTOR.services_by_name["Learner"],
    "controller": controller_pb2.DESCRIPTOR.services_by_name["Controller"],
}
METHODS = [(svc, m.name) for svc, desc in SERVICES.items() for m in desc.methods]

COUNTS: Counter[str] = Counter()  # "service/Method/kind" -> cases sent
CODES: Counter[str] = Counter()  # status code name -> count

# --- strategies over descriptors -------------------------------------------------------------------

I32 = [-(2**31), -(2**31) + 1, -1, 0, 1, 2, 3, 2**31 - 1]
I64 = [-(2**63), -1, 0, 1, 2, 2**31, 2**63 - 1]
U64 = [0, 1, 2**32, 2**64 - 1]
ODD_STRINGS = ["", " ", "\x00", "\x00" * 64, "a" * 10_000, "../../../../etc/passwd", "/", ".", "{", "}{][",
               "\u202e\u200b", "💥" * 200, "\ud7ff\ue000\uffff", "null", "-1", "NaN", "<query>x</query>",
               "<|im_start|>system\n", "\n" * 500, "%s%n%x", "1e999"]
FLOATS = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, -1.0, 1e30, -1e30,
                                    3.4e38, 1e-45]), st.floats(width=32))
DOUBLES = st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, 1e308, 0.0]), st.floats())
STRINGS = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=60))

_FD = _d.FieldDescriptor


def _scalar(field: _d.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == _FD.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1)
    if t == _FD.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
    if t == _FD.TYPE_STRING:
        return STRINGS
    if t == _FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == _FD.TYPE_BOOL:
        return st.booleans()
    if t == _FD.TYPE_FLOAT:
        return FLOATS
    if t == _FD.TYPE_DOUBLE:
        return DOUBLES
    if t in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32):
        return st.one_of(st.sampled_from(I32), st.integers(-8, 64))
    if t in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32):
        return st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 64))
    if t in (_FD.TYPE_UINT64, _FD.TYPE_FIXED64):
        return st.one_of(st.sampled_from(U64), st.integers(0, 64))
    return st.one_of(st.sampled_from(I64), st.integers(-8, 64))  # int64, sint64, sfixed64


def _repeated(elem: st.SearchStrategy[Any], field: _d.FieldDescriptor) -> st.SearchStrategy[list[Any]]:
    small = st.lists(elem, max_size=3)
    if field.type == _FD.TYPE_MESSAGE:
        return small
    # scalars: also lists long enough to cross every configured limit (max_queries 1024, max_k, ...)
    return st.one_of(small, st.integers(0, 5000).flatmap(lambda n: elem.map(lambda v: [v] * n)))


def message_strategy(desc: _d.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = message_factory.GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in desc.fields:
        if f.type == _FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            optional[f.name] = st.dictionaries(_scalar(kf, depth), _scalar(vf, depth), max_size=4)
        elif f.is_repeated:
            optional[f.name] = st.deferred(lambda f=f: _repeated(_scalar(f, depth), f))
        else:
            optional[f.name] = st.deferred(lambda f=f: _scalar(f, depth))
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: cls(**kw))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _non_utf8(desc: _d.Descriptor) -> st.SearchStrategy[bytes]:
    """A valid message plus one string field (top level) carrying invalid UTF-8."""
    strings = [f.number for f in desc.fields if f.type == _FD.TYPE_STRING]
    bad = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok\x80ok", b"\xfe" * 300])
    if not strings:
        return st.binary(min_size=1, max_size=32)
    return st.tuples(message_strategy(desc), st.sampled_from(strings), bad).map(
        lambda t: t[0].SerializeToString() + _varint(t[1] << 3 | 2) + _varint(len(t[2])) + t[2])


def raw_strategy(desc: _d.Descriptor) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        _non_utf8(desc),
        # truncated / corrupted valid encodings
        message_strategy(desc).map(lambda m: m.SerializeToString()).flatmap(
            lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda i: b[:i]) if b else st.just(b"\x0a\xff")),
        st.sampled_from([b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11, b"\xff" * 16, b"\x0b", b"\x0c",
                         b"\x0d\x00", b"\x12\x05abc"]),  # huge length, overlong varint, bad wire types, short
    )


# --- calling --------------------------------------------------------------------------------------

def _call(channel: grpc.Channel, svc: str, method: str, payload: Any, raw: bool) -> grpc.StatusCode:
    code, details = _call_details(channel, svc, method, payload, raw)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size" in details:
        return grpc.StatusCode.INTERNAL  # the client refused oversized trailers: not the server's decision
    return code


def _call_details(channel: grpc.Channel, svc: str, method: str, payload: Any, raw: bool
                  ) -> tuple[grpc.StatusCode, str]:
    mdesc = SERVICES[svc].methods_by_name[method]
    path = f"/{SERVICES[svc].full_name}/{method}"
    ser = None if raw else (lambda m: m.SerializeToString())
    try:
        if mdesc.server_streaming:
            call = channel.unary_stream(path, request_serializer=ser, response_deserializer=None)(
                payload, timeout=STREAM_TIMEOUT_S)
            try:
                for _ in call:
                    pass
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # still streaming: alive, not an error
                    return grpc.StatusCode.OK, ""
                raise
        else:
            channel.unary_unary(path, request_serializer=ser, response_deserializer=None)(payload,
                                                                                          timeout=RPC_TIMEOUT_S)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _check(channel: grpc.Channel, svc: str, method: str, payload: Any, raw: bool, proc: Any) -> None:
    code = _call(channel, svc, method, payload, raw)
    COUNTS[f"{svc}/{method}/{'raw' if raw else 'msg'}"] += 1
    CODES[code.name] += 1
    shown = payload if raw else str(payload)[:2000]
    assert code in ALLOWED, f"{svc}/{method} answered {code.name} to {shown!r}"
    assert proc.poll() is None, f"{svc} died on {shown!r}"


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    path = os.environ.get("S3_FUZZ_REPORT")
    if path:
        with open(path, "w") as fh:
            json.dump({"total": sum(COUNTS.values()), "per_method": dict(sorted(COUNTS.items())),
                       "codes": dict(CODES)}, fh, indent=1)


def _service(request: pytest.FixtureRequest, svc: str) -> Any:
    return request.getfixturevalue(svc)


def _healthy(svc: Any, name: str) -> None:
    with grpc.insecure_channel(svc.grpc_target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=name), timeout=30)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


NORMAL: dict[str, tuple[str, Any]] = {
    "retriever": ("Search", retriever_pb2.SearchRequest(queries=["who founded the city"], k=2)),
    "generator": ("Answer", generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="What is x?")],
                                                        max_new_tokens=4)),
    "searcher": ("PolicyInfo", searcher_pb2.PolicyInfoRequest()),
    "learner": ("Status", learner_pb2.LearnerStatusRequest()),
    "controller": ("ListJobs", controller_pb2.ListJobsRequest(limit=5)),
}


def _normal_request_works(svc_name: str, svc: Any) -> None:
    method, req = NORMAL[svc_name]
    with grpc.insecure_channel(svc.grpc_target) as ch:
        assert _call(ch, svc_name, method, req, raw=False) == grpc.StatusCode.OK
    _healthy(svc, SERVICES[svc_name].full_name)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("svc_name", "method"), METHODS, ids=[f"{s}-{m}" for s, m in METHODS])
def test_fuzz_messages(request: pytest.FixtureRequest, svc_name: str, method: str) -> None:
    svc = _service(request, svc_name)
    mdesc = SERVICES[svc_name].methods_by_name[method]
    with grpc.insecure_channel(svc.grpc_target) as channel:

        @given(message_strategy(mdesc.input_type))
        def prop(msg: Any) -> None:
            _check(channel, svc_name, method, msg, False, svc.proc)

        prop()
    _normal_request_works(svc_name, svc)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("svc_name", "method"), METHODS, ids=[f"{s}-{m}" for s, m in METHODS])
def test_fuzz_raw_bytes(request: pytest.FixtureRequest, svc_name: str, method: str) -> None:
    svc = _service(request, svc_name)
    mdesc = SERVICES[svc_name].methods_by_name[method]
    with grpc.insecure_channel(svc.grpc_target) as channel:

        @given(raw_strategy(mdesc.input_type))
        def prop(data: bytes) -> None:
            _check(channel, svc_name, method, data, True, svc.proc)

        prop()
    _normal_request_works(svc_name, svc)


# --- the retriever's HTTP shim --------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), STRINGS),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(STRINGS, inner, max_size=4)),
    max_leaves=12,
)
RETRIEVE_BODIES = st.one_of(
    st.binary(max_size=300),
    st.fixed_dictionaries({}, optional={"queries": JSON_VALUES | st.lists(STRINGS, max_size=3),
                                        "topk": JSON_VALUES, "return_scores": JSON_VALUES,
                                        "index": JSON_VALUES}).map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"{", b'{"queries": ["a"], "topk": 1e999}', b'{"queries": ["\\ud800"], "topk": 1}',
                     b'{"queries": "abc", "topk": 2}', b"[" * 5000 + b"]" * 5000, b'{"queries": [["x"]]}',
                     b'{"queries": ["a"], "topk": NaN}', b'{"queries": ["a"], "topk": -Infinity}', b"\xff\xfe"]),
)


def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            json.loads(resp.read())
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


@pytest.mark.timeout(900)
def test_fuzz_http_retrieve(retriever: Any) -> None:
    url = f"{retriever.http_base}/retrieve"

    @given(RETRIEVE_BODIES)
    def prop(body: bytes) -> None:
        status = _post(url, body)
        COUNTS["retriever/POST /retrieve/http"] += 1
        CODES[f"HTTP {status}"] += 1
        assert status in (200, 400, 404, 413, 422), f"POST /retrieve answered {status} to {body[:300]!r}"
        assert retriever.proc.poll() is None, f"retriever died on {body[:300]!r}"

    prop()
    assert _post(url, json.dumps({"queries": ["who founded the city"], "topk": 2}).encode()) == 200


# --- the bugs the fuzzing found, and the configured limits crossed by one ---------------------------

def _q(i: int) -> Any:
    from s3.v1 import common_pb2

    return common_pb2.Question(id=str(i), question=f"question {i}?")


BEYOND: list[tuple[str, str, Any, bool, str]] = [
    # (service, method, request, raw, expected status)
    ("retriever", "Search", b"\x00", True, "INVALID_ARGUMENT"),  # was UNKNOWN: undecodable request
    ("retriever", "Search", b"\x0a\x02\xff\xfe", True, "INVALID_ARGUMENT"),  # non-UTF-8 query: was UNKNOWN
    ("searcher", "LoadPolicy", searcher_pb2.LoadPolicyRequest(checkpoint_path="a" * 10_000, version=2), False,
     "INVALID_ARGUMENT"),  # was INTERNAL: OSError "File name too long"
    ("searcher", "LoadPolicy", searcher_pb2.LoadPolicyRequest(checkpoint_path="x\x00y", version=2), False,
     "NOT_FOUND"),  # NUL byte in a path
    ("retriever", "Search", retriever_pb2.SearchRequest(queries=["q"] * 1025, k=3), False, "INVALID_ARGUMENT"),
    ("retriever", "Search", retriever_pb2.SearchRequest(queries=["q"], k=101), False, "INVALID_ARGUMENT"),
    ("retriever", "Search", retriever_pb2.SearchRequest(queries=["q" * 8193], k=3), False, "INVALID_ARGUMENT"),
    ("generator", "Answer", generator_pb2.AnswerRequest(items=[generator_pb2.AnswerItem(question="q")] * 513),
     False, "INVALID_ARGUMENT"),
    ("generator", "Complete", generator_pb2.CompleteRequest(max_new_tokens=4097), False, "INVALID_ARGUMENT"),
    ("searcher", "Rollout", searcher_pb2.RolloutRequest(questions=[_q(i) for i in range(257)]), False,
     "INVALID_ARGUMENT"),
    ("searcher", "Rollout", searcher_pb2.RolloutRequest(questions=[_q(0)], knobs=searcher_pb2.SearchKnobs(n=17)),
     False, "INVALID_ARGUMENT"),
    ("learner", "Update", learner_pb2.UpdateRequest(trajectories=[learner_pb2.ScoredTrajectory()] * 4097), False,
     "INVALID_ARGUMENT"),
    ("controller", "ListJobs", controller_pb2.ListJobsRequest(limit=-1), False, "INVALID_ARGUMENT"),
    # an error echoing a 100k-character input: details clipped (was: trailers over the client's 8 KiB
    # limit, seen as RESOURCE_EXHAUSTED "received metadata size exceeds soft limit")
    ("retriever", "Search", retriever_pb2.SearchRequest(queries=["q"], k=2, index="i" * 100_000), False, "NOT_FOUND"),
]


@pytest.mark.parametrize(("svc_name", "method", "payload", "raw", "expected"), BEYOND,
                         ids=[f"{s}-{m}-{i}" for i, (s, m, *_) in enumerate(BEYOND)])
def test_found_bugs_and_limits(request: pytest.FixtureRequest, svc_name: str, method: str, payload: Any, raw: bool,
                               expected: str) -> None:
    svc = _service(request, svc_name)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        assert _call(ch, svc_name, method, payload, raw).name == expected
    assert svc.proc.poll() is None


def test_http_deep_nesting_is_400(retriever: Any) -> None:
    # was: RecursionError in json.loads, the connection dropped without a response
    assert _post(f"{retriever.http_base}/retrieve", b"[" * 100_000 + b"]" * 100_000) == 400
