"""The common ``main`` of every service process.

Order of start-up: bind gRPC (health NOT_SERVING) and the HTTP side-server → load the heavy part
(index, model) in a thread → health SERVING → write the ready file (``{"grpc_port", "http_port",
"pid"}``, atomically) → serve until SIGTERM/SIGINT → graceful stop.  Binding first means Kubernetes
probes and ``s3 up`` see a live-but-loading server instead of a refused connection.  A load that raises
:class:`NotServing` leaves health NOT_SERVING until a signal (no partial service).

A service's ``main`` parses its flags (:func:`add_common_args`), loads its config (a bad one:
:func:`config_error`, exit 2), builds a :class:`ServiceSpec` and returns :func:`run_service`'s status.
See docs/adding-a-service.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable

import grpc

from s3core.errors import S3Error
from s3core.io import write_json
from s3core.rpc.http import SideServer
from s3core.rpc.server import DEFAULT_MAX_MESSAGE_BYTES, start_server

logger = logging.getLogger(__name__)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (s3core.config)")
    parser.add_argument("--preset", action="append", default=[], help="config preset (repeatable)")
    parser.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (0 = pick a free one)")
    parser.add_argument("--http-port", type=int, help="HTTP port for /metrics, /healthz (0 = pick)")
    parser.add_argument("--ready-file", help="write {grpc_port, http_port, pid} here once serving")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ...")


class NotServing(Exception):
    """Raised by a :attr:`ServiceSpec.load` that must not serve at all (say, an incomplete shard set): health
    stays NOT_SERVING, the process waits for SIGTERM / SIGINT and then stops cleanly (exit status 0)."""


def config_error(name: str, exc: BaseException) -> int:
    """A service's bad flags or config: ``s3-<name>: error: ...`` on stderr, exit status 2."""
    print(f"s3-{name}: error: {exc}", file=sys.stderr)
    return 2


@dataclass
class ServiceSpec:
    name: str  # e.g. "retriever"
    service_names: list[str]  # full gRPC service names, e.g. ["s3.v1.Retriever"]
    register: Callable[[grpc.aio.Server], None]
    load: Callable[[], None]  # heavy loading; runs in a thread after the ports are bound
    is_ready: Callable[[], bool]
    setup_http: Callable[[SideServer], None] | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 0  # RPCs in flight beyond it get RESOURCE_EXHAUSTED (0 = no limit)


async def serve(spec: ServiceSpec, host: str, port: int, http_port: int, ready_file: str | None = None,
                exit_process: bool = True) -> None:
    running = await start_server(spec.register, spec.service_names, f"{host}:{port}", spec.max_message_bytes,
                                 max_concurrent_rpcs=spec.max_concurrent_rpcs)
    side = SideServer(host, http_port, ready=spec.is_ready)
    if spec.setup_http is not None:
        spec.setup_http(side)
    side.start()
    logger.info("%s: gRPC (%s) on %s:%d, HTTP on %s:%d; loading", spec.name, running.tls_mode, host, running.port,
                host, side.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass

    stopped = False
    try:
        loading = asyncio.ensure_future(asyncio.to_thread(spec.load))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():
            # stopped while loading (`s3 down`, or the parent that started us died): a model load
            # cannot be interrupted and may take minutes, so leave now instead of after it
            logger.info("%s: stopped while loading", spec.name)
            side.stop()
            if exit_process:
                logging.shutdown()
                os._exit(0)
        stopping.cancel()
        try:
            await loading  # re-raises a load error
            serving = True
        except NotServing:  # health stays NOT_SERVING until a signal
            serving = False
        if serving:
            await running.set_serving(True)
            if ready_file:
                write_json(ready_file, {"grpc_port": running.port, "http_port": side.port, "pid": os.getpid()})
            logger.info("%s: serving", spec.name)
        await stop.wait()
        stopped = True
    finally:
        logger.info("%s: shutting down", spec.name)
        await running.stop(grace=2.0)
        side.stop()
    if stopped and exit_process:
        # Model work of cancelled RPCs may still run in worker threads, and interpreter exit would
        # wait for it (minutes for a long rollout): the RPCs are gone, so leave now.
        logging.shutdown()
        os._exit(0)


def run_service(spec: ServiceSpec, host: str, port: int, http_port: int, ready_file: str | None = None,
                cleanup: Callable[[], None] | None = None) -> int:
    """Serve ``spec`` in this process until a signal; the exit status of the service's ``main``: 0 once
    stopped, 1 on a platform error (``s3-<name>: error: ...`` on stderr), 130 on Ctrl-C.  ``cleanup`` runs
    whatever happened (closing models, engines, indexes)."""
    try:
        asyncio.run(serve(spec, host, port, http_port, ready_file))
    except S3Error as exc:
        print(f"s3-{spec.name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if cleanup is not None:
            cleanup()
    return 0
