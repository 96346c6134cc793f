"""``s3-controller`` / ``python -m s3_controller``: the controller service process.

    python -m s3_controller --redis-url redis://127.0.0.1:6390/0 --backend local --port 0 --http-port 0 \\
        --ready-file /tmp/controller.json

Binds gRPC (``s3.v1.Controller`` + health + reflection) and the HTTP side-server (``/metrics``,
``/healthz``), then runs the reconcile loop in a thread: it launches pending jobs on the backend
(``local`` worker processes or ``kubernetes`` Jobs), watches running ones and re-attaches to the
workers of a previous controller.  Health is SERVING while the job store's Redis answers and
NOT_SERVING while it does not (RPCs then fail with UNAVAILABLE); the ready file is written the first
time it answers.  With a token (``--auth-token-file``, ``$S3_AUTH_TOKEN_FILE`` or
``$S3_AUTH_TOKEN``) every RPC but the health check needs ``authorization: Bearer <token>``.
Stopping the controller leaves running workers running; the next controller picks them up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from s3.v1 import controller_pb2_grpc
from s3_controller import metrics
from s3_controller.servicer import SERVICE_NAME, ControllerServicer
from s3core.cache.baseline import redis_url as default_redis_url
from s3core.config import load_config
from s3core.errors import S3Error
from s3core.io import write_json
from s3core.jobs.client import DEFAULT_HTTP_PORT, DEFAULT_PORT
from s3core.jobs.controller import ControllerSettings, JobController
from s3core.jobs.store import JobStore
from s3core.rpc.auth import BearerTokenInterceptor, load_token
from s3core.rpc.http import SideServer
from s3core.rpc.server import start_server
from s3core.rpc.service_main import add_common_args
from s3core.telemetry.logging import setup_logging

logger = logging.getLogger("s3_controller")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3-controller",
        description="s3 controller service: persistent index / precompute / eval / train / infer jobs "
                    "(s3.v1.Controller), run as local worker processes or Kubernetes Jobs, state in Redis; "
                    "HTTP /metrics and /healthz on the side.",
    )
    add_common_args(p)
    p.add_argument("--redis-url", help="job store, redis://host:port/db (default: redis.url, else the local one "
                                       "`s3 up` starts)")
    p.add_argument("--namespace", default="s3", help="key namespace of the job store in Redis (default s3)")
    p.add_argument("--backend", choices=["local", "kubernetes"], default="local",
                   help="where workers run: local processes (default) or Kubernetes Jobs")
    p.add_argument("--state-dir", help="local backend: worker logs and per-attempt files (default: config "
                                       "state_dir, .s3)")
    p.add_argument("--auth-token-file", help="file holding the bearer token every RPC must carry (default "
                                             "$S3_AUTH_TOKEN_FILE, else $S3_AUTH_TOKEN; none = no auth)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=0,
                   help="RPCs in flight beyond this are answered RESOURCE_EXHAUSTED (0 = no limit; default 0)")
    p.add_argument("--max-running", type=int, default=4,
                   help="attempts of this backend running at once (0 = no limit; default 4)")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds between worker heartbeats")
    p.add_argument("--heartbeat-timeout", type=float, default=30.0,
                   help="a worker silent this long is lost (failed, or retried); default 30 s")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="a launched worker must report within this many seconds (default 120)")
    p.add_argument("--cancel-grace", type=float, default=60.0,
                   help="seconds a cancelled worker gets to stop (and stop the services it started) before it is "
                        "killed (default 60)")
    p.add_argument("--reconcile-interval", type=float, default=1.0, help="seconds between reconcile rounds")
    p.add_argument("--worker-threads", type=int, default=0,
                   help="local backend: OMP/MKL threads per worker, so concurrent jobs do not oversubscribe the "
                        "CPUs (0 = library default)")
    k = p.add_argument_group("kubernetes backend")
    k.add_argument("--k8s-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                   help="namespace of the Jobs (default $POD_NAMESPACE, else default)")
    k.add_argument("--k8s-image", default=os.environ.get("S3_WORKER_IMAGE", ""),
                   help="worker image (default $S3_WORKER_IMAGE; a spec's kubernetes.image wins)")
    k.add_argument("--k8s-redis-url", help="the job store URL as pods see it (default: --redis-url)")
    k.add_argument("--k8s-redis-secret", default="", metavar="SECRET:KEY",
                   help="Secret key holding the job store URL for pods (instead of --k8s-redis-url)")
    k.add_argument("--k8s-auth-secret", default="", metavar="SECRET:KEY",
                   help="Secret key holding the bearer token, given to workers as S3_AUTH_TOKEN")
    k.add_argument("--k8s-tls-secret", default="", metavar="SECRET",
                   help="kubernetes.io/tls Secret mounted into worker pods, which then dial the services over TLS")
    k.add_argument("--k8s-tls-client-auth", action="store_true",
                   help="with --k8s-tls-secret: workers present its tls.crt (services that require mTLS)")
    k.add_argument("--k8s-service-account", default="", help="service account of the worker pods")
    k.add_argument("--k8s-owner", default="", metavar="APIVERSION/KIND/NAME/UID",
                   help="owner reference put on every Job, e.g. apps/v1/Deployment/s3-controller/<uid> "
                        "(default from $S3_OWNER_KIND, $S3_OWNER_NAME, $S3_OWNER_UID)")
    return p


def _owner(spec: str) -> dict[str, str] | None:
    if not spec:
        kind, name, uid = (os.environ.get(f"S3_OWNER_{x}", "") for x in ("KIND", "NAME", "UID"))
        if not (kind and name and uid):
            return None
        api = os.environ.get("S3_OWNER_API_VERSION", "apps/v1" if kind in ("Deployment", "StatefulSet") else "v1")
        return {"apiVersion": api, "kind": kind, "name": name, "uid": uid}
    parts = spec.split("/")
    if len(parts) == 4:
        api, kind, name, uid = parts
    elif len(parts) == 5:
        api, kind, name, uid = f"{parts[0]}/{parts[1]}", parts[2], parts[3], parts[4]
    else:
        raise S3Error(f"--k8s-owner must be APIVERSION/KIND/NAME/UID, got {spec!r}")
    return {"apiVersion": api, "kind": kind, "name": name, "uid": uid}


def build_backend(args: argparse.Namespace, url: str, state_dir: str) -> Any:
    if args.backend == "local":
        from s3core.jobs.backends.local import LocalBackend

        return LocalBackend(url, namespace=args.namespace, state_dir=state_dir,
                            heartbeat_interval=args.heartbeat_interval, threads=args.worker_threads)
    from s3core.jobs.backends.kubernetes import KubernetesBackend, KubeSettings

    settings = KubeSettings(
        namespace=args.k8s_namespace, image=args.k8s_image, redis_url=args.k8s_redis_url or url,
        redis_secret=args.k8s_redis_secret, auth_secret=args.k8s_auth_secret, store_namespace=args.namespace,
        tls_secret=args.k8s_tls_secret, tls_client_auth=args.k8s_tls_client_auth,
        owner=_owner(args.k8s_owner), service_account=args.k8s_service_account,
        heartbeat_interval=args.heartbeat_interval,
    )
    return KubernetesBackend(settings)


async def serve(controller: JobController, servicer: ControllerServicer, host: str, port: int, http_port: int,
                token: str, ready_file: str | None, max_concurrent_rpcs: int = 0) -> None:
    interceptors = [BearerTokenInterceptor(token, on_result=metrics.auth_result)] if token else []
    running = await start_server(lambda s: controller_pb2_grpc.add_ControllerServicer_to_server(servicer, s),
                                 [SERVICE_NAME], f"{host}:{port}", interceptors=interceptors,
                                 max_concurrent_rpcs=max_concurrent_rpcs)
    redis_up = threading.Event()
    side = SideServer(host, http_port, ready=redis_up.is_set)
    side.start()
    logger.info("controller: gRPC on %s:%d, HTTP on %s:%d, backend %s, job store %s%s", host, running.port, host,
                side.port, controller.backend.name, controller.store.url, "" if token else " (no auth token: open)")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass

    wrote_ready = False

    async def set_health(up: bool) -> None:
        nonlocal wrote_ready
        await running.set_serving(up)
        if up and ready_file and not wrote_ready:
            write_json(ready_file, {"grpc_port": running.port, "http_port": side.port, "pid": os.getpid()})
            wrote_ready = True
            logger.info("controller: serving")

    def on_redis(up: bool) -> None:  # reconcile thread
        (redis_up.set if up else redis_up.clear)()
        asyncio.run_coroutine_threadsafe(set_health(up), loop)

    halt = threading.Event()
    thread = threading.Thread(target=controller.run_forever, args=(halt, on_redis), name="s3-reconcile",
                              daemon=True)
    thread.start()
    try:
        await stop.wait()
    finally:
        logger.info("controller: shutting down (workers keep running)")
        halt.set()
        controller.wake.set()
        await running.stop(grace=2.0)
        side.stop()
        await asyncio.to_thread(thread.join, 10.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = load_config(args.config, args.preset)
        url = args.redis_url or default_redis_url(cfg.redis.url, cfg.redis.port)
        token = load_token(None, args.auth_token_file)
        state_dir = os.path.abspath(args.state_dir or cfg.state_dir)
        store = JobStore.from_url(url, namespace=args.namespace)
        backend = build_backend(args, url, state_dir)
        settings = ControllerSettings(max_running=args.max_running, heartbeat_timeout_s=args.heartbeat_timeout,
                                      start_timeout_s=args.start_timeout, cancel_grace_s=args.cancel_grace,
                                      reconcile_interval_s=args.reconcile_interval)
        if args.max_concurrent_rpcs < 0:
            raise S3Error("--max-concurrent-rpcs must be >= 0")
        for name in ("max_running",):
            if getattr(settings, name) < 0:
                raise S3Error(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("heartbeat_timeout_s", "start_timeout_s", "cancel_grace_s", "reconcile_interval_s"):
            if not getattr(settings, name) > 0:
                raise S3Error(f"--{name[:-2].replace('_', '-')} must be > 0")
        if not args.heartbeat_interval > 0 or args.heartbeat_interval * 2 > args.heartbeat_timeout:
            raise S3Error("--heartbeat-interval must be > 0 and at most half of --heartbeat-timeout")
    except S3Error as exc:
        print(f"s3-controller: error: {exc}", file=sys.stderr)
        return 2
    controller = JobController(store, backend, settings, metrics.MetricsHooks())
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="s3-controller")
    servicer = ControllerServicer(controller, executor)
    host = args.host or "127.0.0.1"
    port = DEFAULT_PORT if args.port is None else args.port
    http_port = DEFAULT_HTTP_PORT if args.http_port is None else args.http_port
    try:
        asyncio.run(serve(controller, servicer, host, port, http_port, token, args.ready_file,
                          args.max_concurrent_rpcs))
    except S3Error as exc:
        print(f"s3-controller: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
