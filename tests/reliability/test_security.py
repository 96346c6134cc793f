"""Bearer-token auth on all five services, and the token never in a log.

Every service is started with ``$S3_AUTH_TOKEN`` set (and DEBUG logging).  Each of its methods
answers ``UNAUTHENTICATED`` without a token, with a wrong one, and to malformed bytes without a
token; a normal request with the token is served; the health service stays open (probes).  After
all that, the token appears in no service's log.  TLS and mTLS for gRPC (``S3_TLS_*``): see the
section at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from s3.v1 import controller_pb2, generator_pb2, learner_pb2, retriever_pb2, searcher_pb2

TOKEN = "s3-secret-token-9c1e5b7d"  # noqa: S105 - a test value
WRONG = "s3-wrong-token-0000"

SERVICES = {
    "retriever": retriever_pb2.DESCRIPTOR.services_by_name["Retriever"],
    "generator": generator_pb2.DESCRIPTOR.services_by_name["Generator"],
    "searcher": searcher_pb2.DESCRIPTOR.services_by_name["Searcher"],
    "learner": learner_pb2.DESCRIPTOR.services_by_name["Learner"],
    "controller": controller_pb2.DESCRIPTOR.services_by_name["Controller"],
}
NORMAL: dict[str, tuple[str, Any]] = {
    "retriever": ("Search", retriever_pb2.SearchRequest(queries=["bridge"], k=2)),
    "generator": ("ModelInfo", generator_pb2.ModelInfoRequest()),
    "searcher": ("PolicyInfo", searcher_pb2.PolicyInfoRequest()),
    "learner": ("Status", learner_pb2.LearnerStatusRequest()),
    "controller": ("ListJobs", controller_pb2.ListJobsRequest(limit=5)),
}


@pytest.fixture(scope="module")
def authed(world: dict[str, Any], redis_url: str, service_runner: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dbg = ["--log-level", "DEBUG"]
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as stack:
        mp.setenv("S3_AUTH_TOKEN", TOKEN)

        def start(name: str, args: list[str]) -> Any:
            return stack.enter_context(service_runner(f"s3_{name}", [*args, *dbg],
                                                      tmp_path_factory.mktemp(f"auth-{name}"), 180))

        out = {"retriever": start("retriever", ["--index", str(world["index"]), "--threads", "1"])}
        out["generator"] = start("generator", ["--model", str(world["model"])])
        out["searcher"] = start("searcher", ["--retriever", out["retriever"].grpc_target, "--model",
                                             str(world["model"]), "--threads", "1"])
        ck = tmp_path_factory.mktemp("auth-ckpt")
        out["learner"] = start("learner", ["--checkpoint-dir", str(ck), "--model", str(world["model"]),
                                           "--algorithm", "grpo", "--device", "cpu", "--threads", "1"])
        out["controller"] = start("controller", ["--redis-url", redis_url, "--state-dir",
                                                 str(tmp_path_factory.mktemp("auth-state")), "--worker-threads", "1"])
        yield out


def _code(ch: grpc.Channel, svc: str, method: str, payload: Any, token: str | None, raw: bool = False) -> str:
    desc = SERVICES[svc]
    path = f"/{desc.full_name}/{method}"
    ser = None if raw else (lambda m: m.SerializeToString())
    md = [("authorization", f"Bearer {token}")] if token else None
    try:
        if desc.methods_by_name[method].server_streaming:
            for _ in ch.unary_stream(path, request_serializer=ser)(payload, metadata=md, timeout=5):
                pass
        else:
            ch.unary_unary(path, request_serializer=ser)(payload, metadata=md, timeout=60)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


@pytest.mark.timeout(600)
@pytest.mark.parametrize("svc", list(SERVICES))
def test_every_method_needs_the_token(authed: dict[str, Any], svc: str) -> None:
    from google.protobuf import message_factory

    with grpc.insecure_channel(authed[svc].grpc_target) as ch:
        for m in SERVICES[svc].methods:
            empty = message_factory.GetMessageClass(m.input_type)()
            assert _code(ch, svc, m.name, empty, None) == "UNAUTHENTICATED", m.name
            assert _code(ch, svc, m.name, empty, WRONG) == "UNAUTHENTICATED", m.name
            assert _code(ch, svc, m.name, b"\xff\xfe\x00garbage", None, raw=True) == "UNAUTHENTICATED", m.name
            # with the token the request reaches the servicer: whatever it says, it is not an auth failure
            assert _code(ch, svc, m.name, b"\xff\xfe", TOKEN, raw=True) == "INVALID_ARGUMENT", m.name
        method, req = NORMAL[svc]
        assert _code(ch, svc, method, req, TOKEN) == "OK"
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=30)  # no token
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_token_never_logged(authed: dict[str, Any]) -> None:
    for name, svc in authed.items():
        text = svc.log.read_text(errors="replace")
        assert text, f"{name} wrote no log"
        assert TOKEN not in text, f"the auth token appears in the {name} log"
        assert WRONG not in text, f"a presented (wrong) token appears in the {name} log"


# --- TLS ------------------------------------------------------------------------------------------
# A throw-away PKI made at test time with the openssl CLI: a CA, a server certificate for
# localhost / 127.0.0.1, a client certificate from the same CA, and a second ("rogue") CA with a
# client certificate of its own.  Real services are started with S3_TLS_* (and the bearer token and
# DEBUG logging): TLS clients are served, plaintext clients and clients that do not trust the CA are
# refused, and with S3_TLS_CLIENT_CA_FILE (mTLS) a client without a certificate from that CA is
# refused too.  Neither the token nor the private keys appear in any log.

def _openssl(cwd: Any, *args: str) -> None:
    import subprocess

    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {' '.join(args)}:\n{out.stderr}"


def _issue(cwd: Any, name: str, ca: str, subject: str, ext: str) -> None:
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import os
    import shutil

    if shutil.which("openssl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the TLS tests need the openssl CLI (apt-get install openssl)")
        pytest.skip("no openssl CLI to make test certificates with")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=s3 test {ca}", "-addext",
                 "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _issue(d, "server", "ca", "/CN=localhost", "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
           "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _issue(d, "client", "ca", "/CN=s3 test client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    _issue(d, "rogue-client", "rogue-ca", "/CN=s3 rogue client", "basicConstraints=CA:FALSE\n"
           "extendedKeyUsage=clientAuth\n")
    return d


@pytest.fixture(scope="module")
def tls_services(world: dict[str, Any], redis_url: str, pki: Any, service_runner: Any,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """retriever and controller over TLS, a retriever over mTLS; all with the token and DEBUG logs."""
    server_env = {"S3_TLS_CERT_FILE": str(pki / "server.crt"), "S3_TLS_KEY_FILE": str(pki / "server.key"),
                  "S3_AUTH_TOKEN": TOKEN}
    with contextlib.ExitStack() as stack:
        def start(name: str, module: str, args: list[str], env: dict[str, str]) -> Any:
            with pytest.MonkeyPatch.context() as mp:  # the service's environment only, not the tests'
                for k, v in env.items():
                    mp.setenv(k, v)
                return stack.enter_context(service_runner(module, [*args, "--log-level", "DEBUG"],
                                                          tmp_path_factory.mktemp(f"tls-{name}"), 180))

        ret_args = ["--index", str(world["index"]), "--threads", "1"]
        out = {
            "retriever": start("retriever", "s3_retriever", ret_args, server_env),
            "mtls": start("mtls", "s3_retriever", ret_args, {**server_env,
                                                              "S3_TLS_CLIENT_CA_FILE": str(pki / "ca.crt")}),
            "controller": start("controller", "s3_controller",
                                ["--redis-url", redis_url, "--state-dir", str(tmp_path_factory.mktemp("tls-state"))],
                                server_env),
        }
        yield out


def _search_code(target: str, tls: Any) -> str:
    from s3core.rpc.tls import open_channel

    md = [("authorization", f"Bearer {TOKEN}")]
    ch = open_channel(target, tls=tls) if tls is not None else grpc.insecure_channel(target)
    with ch:
        try:
            stub = ch.unary_unary("/s3.v1.Retriever/Search", request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=retriever_pb2.SearchResponse.FromString)
            resp = stub(retriever_pb2.SearchRequest(queries=["bridge"], k=2), metadata=md, timeout=15)
            assert len(resp.results) == 1
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def test_tls_clients_are_served_plaintext_ones_refused(tls_services: dict[str, Any], pki: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from s3core.jobs.client import ControllerClient
    from s3core.rpc.clients import RetrieverClient
    from s3core.rpc.tls import ClientTLS

    ret = tls_services["retriever"]
    assert _search_code(ret.grpc_target, ClientTLS(ca_file=str(pki / "ca.crt"))) == "OK"
    # plaintext: the TLS port does not speak it (the same for the health service: probes use /healthz)
    assert _search_code(ret.grpc_target, None) == "UNAVAILABLE"
    with grpc.insecure_channel(ret.grpc_target) as ch, pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # a client that does not trust the server's CA
    assert _search_code(ret.grpc_target, ClientTLS(ca_file=str(pki / "rogue-ca.crt"))) == "UNAVAILABLE"
    # the HTTP side-server's /healthz stays plaintext: what Kubernetes probes a TLS service with
    with urllib.request.urlopen(f"{ret.http_base}/healthz", timeout=10) as r:
        assert r.status == 200

    # the typed clients take TLS from the environment (S3_TLS_CA_FILE), as services and the CLI do
    monkeypatch.setenv("S3_TLS_CA_FILE", str(pki / "ca.crt"))
    monkeypatch.setenv("S3_AUTH_TOKEN", TOKEN)
    with RetrieverClient(ret.grpc_target, timeout=30) as rc:
        rc.wait_ready(30)
        assert [d.id for d in rc.search(["bridge"], 2)[0]]
    with ControllerClient(tls_services["controller"].grpc_target) as cc:
        cc.wait_ready(30)
        assert isinstance(cc.list(limit=5), list)
    # S3_TLS_SERVER_NAME: the name checked in the certificate instead of the dialled host
    ca = str(pki / "ca.crt")
    assert _search_code(ret.grpc_target, ClientTLS(ca_file=ca, server_name="retriever.example")) == "UNAVAILABLE"
    assert _search_code(ret.grpc_target, ClientTLS(ca_file=ca, server_name="localhost")) == "OK"


def test_mtls_refuses_clients_without_a_certificate_from_the_ca(tls_services: dict[str, Any], pki: Any) -> None:
    from s3core.rpc.tls import ClientTLS

    target = tls_services["mtls"].grpc_target
    ca = str(pki / "ca.crt")
    assert _search_code(target, ClientTLS(ca_file=ca)) == "UNAVAILABLE"  # no client certificate
    assert _search_code(target, ClientTLS(ca_file=ca, cert_file=str(pki / "rogue-client.crt"),
                                          key_file=str(pki / "rogue-client.key"))) == "UNAVAILABLE"
    assert _search_code(target, None) == "UNAVAILABLE"
    assert _search_code(target, ClientTLS(ca_file=ca, cert_file=str(pki / "client.crt"),
                                          key_file=str(pki / "client.key"))) == "OK"


def test_tls_secrets_never_logged(tls_services: dict[str, Any], pki: Any) -> None:
    key_lines = [line for name in ("server.key", "client.key", "ca.key")
                 for line in (pki / name).read_text().splitlines() if line and not line.startswith("-----")]
    assert key_lines
    for name, svc in tls_services.items():
        text = svc.log.read_text(errors="replace")
        assert "TLS" in text, f"the {name} log does not say it serves TLS"
        assert TOKEN not in text, f"the auth token appears in the {name} log"
        for line in key_lines:
            assert line not in text, f"private key material appears in the {name} log"


def test_half_configured_tls_fails_fast(pki: Any, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from s3core.errors import InvalidArgument
    from s3core.rpc.tls import ClientTLS, ServerTLS

    env = {**os.environ, "S3_TLS_CERT_FILE": str(pki / "server.crt")}
    env.pop("S3_TLS_KEY_FILE", None)
    out = subprocess.run([sys.executable, "-m", "s3_controller", "--redis-url", "redis://127.0.0.1:1/0", "--port",
                          "0", "--http-port", "0", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    assert "S3_TLS_KEY_FILE" in out.stderr, out.stderr
    with pytest.raises(InvalidArgument, match="S3_TLS_KEY_FILE"):
        ServerTLS(cert_file=str(pki / "server.crt")).credentials()
    with pytest.raises(InvalidArgument, match="S3_TLS_CLIENT_CA_FILE is set but"):
        ServerTLS(client_ca_file=str(pki / "ca.crt")).credentials()
    with pytest.raises(InvalidArgument, match="S3_TLS_CA_FILE is not"):
        ClientTLS(cert_file=str(pki / "client.crt"), key_file=str(pki / "client.key")).credentials()
    missing = tmp_path / "nope.pem"
    with pytest.raises(InvalidArgument, match=f"S3_TLS_CA_FILE={missing}"):
        ClientTLS(ca_file=str(missing)).credentials()
    (tmp_path / "empty.pem").write_text("\n")
    with pytest.raises(InvalidArgument, match="is empty"):
        ServerTLS(cert_file=str(tmp_path / "empty.pem"), key_file=str(pki / "server.key")).credentials()
