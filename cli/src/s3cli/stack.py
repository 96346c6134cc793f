"""`s3 up`, `s3 down`, `s3 status` (the local stack on loopback) and `s3 serve` (one service in the foreground)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from s3cli.common import DEFAULT_STATE, _common_config, _console, _generator_flags, _load_config


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    from rich.table import Table

    from s3core.errors import InvalidArgument
    from s3core.runtime.local import LocalStack

    cfg = _load_config(args)
    stack = LocalStack(args.state_dir)
    c = _console()
    # config redis.port (6390) when it is free, else a free port (a second stack beside the first); the commands
    # that use the local Redis find it through the stack's record ($S3_HOME)
    running = stack.get("redis") is not None  # this stack's Redis already runs: reuse it, wherever it is
    port = 0 if running or not _port_free(cfg.redis.port) else cfg.redis.port
    procs = [stack.start_redis(port)]
    if not running and procs[0].grpc_port != cfg.redis.port:
        c.print(f"redis: port {cfg.redis.port} is taken, using {procs[0].grpc_port} "
                f"(redis://127.0.0.1:{procs[0].grpc_port}/0)")
    config_path = args.config or ""
    if args.index:
        ret = stack.start_retriever(args.index, config_path)
        procs.append(ret)
        if args.searcher:
            procs.append(stack.start_searcher(cfg.searcher, ret.address, config_path))
    elif args.searcher:
        raise InvalidArgument("--searcher needs --index (the searcher searches through the retriever)")
    if not args.no_generator:
        procs.append(stack.start_generator(cfg.generator, config_path))
    if getattr(args, "controller", False):
        from s3core.cache.baseline import redis_url

        procs.append(stack.start_controller(redis_url(cfg.redis.url, procs[0].grpc_port), config_path))
    t = Table(title=f"s3 services ({stack.state_dir})")
    for col in ("service", "pid", "address", "http (/metrics)", "log"):
        t.add_column(col)
    for p in procs:
        t.add_row(p.name, str(p.pid), p.address, f"127.0.0.1:{p.http_port}" if p.http_port else "–", p.log)
    c.print(t)
    return 0


def _existing_state_dir(state_dir: str) -> bool:
    """`s3 down` / `s3 status` read a state dir, never create one: a typo is said, not made a folder.
    False when the default one does not exist (nothing was ever started)."""
    from s3core.errors import NotFound

    if os.path.isdir(os.path.join(state_dir, "run")):
        return True
    if state_dir == DEFAULT_STATE:
        return False
    raise NotFound(f"--state-dir {state_dir}: no s3 state there (nothing was started with it; "
                       f"`s3 up` uses {DEFAULT_STATE} unless given --state-dir)")


def cmd_down(args: argparse.Namespace) -> int:
    from s3core.runtime.local import LocalStack

    stopped = LocalStack(args.state_dir).down() if _existing_state_dir(args.state_dir) else []
    _console().print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from s3core.runtime.local import LocalStack

    procs = LocalStack(args.state_dir).status() if _existing_state_dir(args.state_dir) else []
    t = Table(title="s3 services")
    for col in ("service", "pid", "address", "http (/metrics)"):
        t.add_column(col)
    for p in procs:
        t.add_row(p.name, str(p.pid), p.address, f"127.0.0.1:{p.http_port}" if p.http_port else "–")
    _console().print(t if procs else "no services running")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib

    mod = importlib.import_module(f"s3_{args.service}.server")
    return int(mod.main(args.rest) or 0)


def add_parsers(sub: Any) -> None:
    """`up`, `down` and `status`."""
    p = sub.add_parser("up", help="start redis and the services on loopback")
    p.add_argument("--index", help="index directory for the retriever (no retriever without it)")
    p.add_argument("--no-generator", action="store_true", help="don't start the generator")
    p.add_argument("--searcher", action="store_true", help="also start a searcher (the s3 policy) over the retriever")
    p.add_argument("--controller", action="store_true", help="also start the job controller (s3 jobs ...)")
    p.add_argument("--state-dir", default=DEFAULT_STATE, help="pid files, logs, redis data (default .s3)")
    _common_config(p)
    _generator_flags(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what `s3 up` started")
    p.add_argument("--state-dir", default=DEFAULT_STATE, help=f"the state dir `s3 up` used (default {DEFAULT_STATE})")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="list the running local services")
    p.add_argument("--state-dir", default=DEFAULT_STATE, help=f"the state dir `s3 up` used (default {DEFAULT_STATE})")
    p.set_defaults(func=cmd_status)


def add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run one service in the foreground (as in a container)")
    p.add_argument("service", choices=["retriever", "generator", "searcher", "learner", "controller"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the service's own flags (see s3 serve SERVICE --help)")
    p.set_defaults(func=cmd_serve)
