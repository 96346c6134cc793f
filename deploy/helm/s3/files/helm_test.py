"""`helm test` of the s3 chart: every service's health, then one retrieval and one generation.

Run by the chart's test pod (templates/tests/platform-test.yaml) with the platform image; the ConfigMap
<fullname>-helm-test carries this file.  Exit code 0 when every check passed, 1 otherwise, one line per check::

    python helm_test.py --health retriever=s3-retriever:50051 --health generator=s3-generator:50052 \\
        --retriever s3-retriever:50051 --generator s3-generator:50052 --query "who wrote hamlet"

Auth (S3_AUTH_TOKEN_FILE) and TLS (S3_TLS_*) come from the environment, as in every platform client.
"""

from __future__ import annotations

import argparse
import sys
import time


def _health(name: str, address: str, timeout: float) -> str:
    """"" when the server's overall health status is SERVING, else what it answered."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from s3core.rpc.auth import with_token
    from s3core.rpc.tls import open_channel

    channel = with_token(open_channel(address), None)
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    try:
        while True:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return ""
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() >= deadline:
                return last
            time.sleep(1.0)
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--health", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="a service whose gRPC health must be SERVING (repeatable)")
    p.add_argument("--retriever", default="", help="retriever address(es) for one search (comma-separated shards)")
    p.add_argument("--generator", default="", help="generator address for one answer")
    p.add_argument("--query", default="what is the capital of france", help="the test question")
    p.add_argument("--k", type=int, default=3, help="documents retrieved")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds each health check may wait for SERVING")
    args = p.parse_args(argv)

    failed: list[str] = []

    def report(check: str, problem: str, detail: str = "") -> None:
        print(f"{'ok  ' if not problem else 'FAIL'} {check}{': ' + problem if problem else ''}"
              f"{' -- ' + detail if detail and not problem else ''}", flush=True)
        if problem:
            failed.append(check)

    for item in args.health:
        name, sep, address = item.partition("=")
        if not sep or not address:
            p.error(f"--health {item!r}: expected NAME=HOST:PORT")
        for addr in address.split(","):
            report(f"health {name} {addr}", _health(name, addr, args.timeout))

    docs: list = []
    if args.retriever:
        from s3core.rpc.clients import retriever_client

        try:
            with retriever_client(args.retriever, timeout=60.0) as client:
                (docs,) = client.search([args.query], k=args.k)
            report("search", "" if docs else "no documents returned",
                   f"{len(docs)} documents, first {docs[0].id!r}" if docs else "")
        except Exception as exc:  # noqa: BLE001 - the message is the test's output
            report("search", f"{type(exc).__name__}: {exc}")
    if args.generator:
        from s3core.rpc.clients import GeneratorClient

        try:
            with GeneratorClient(args.generator, timeout=300.0) as client:
                resp = client.answer([(args.query, docs)], max_new_tokens=16)
            (text,) = resp.answers
            report("answer", "" if text.strip() else "empty answer", f"{resp.model}: {text.strip()[:80]!r}")
        except Exception as exc:  # noqa: BLE001
            report("answer", f"{type(exc).__name__}: {exc}")
    print(f"helm test: {'FAILED ' + ', '.join(failed) if failed else 'all checks passed'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
