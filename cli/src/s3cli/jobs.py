"""``s3 jobs submit|list|get|watch|logs|cancel``: the controller from the command line.

The controller is found by ``--controller ADDR``, else ``$S3_CONTROLLER``, else the one ``s3 up
--controller`` started (its record under ``--state-dir``).  The bearer token comes from
``--token-file``, ``$S3_AUTH_TOKEN_FILE`` or ``$S3_AUTH_TOKEN``.  Heavy imports happen inside the
commands, so ``s3 --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

KINDS = ["index", "precompute", "eval", "train", "infer"]
STATES = ["pending", "running", "succeeded", "failed", "cancelled"]
STATE_STYLE = {"pending": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


def _console() -> Any:
    from rich.console import Console

    # pipes and log files get whole tables, not rich's 80-column default for non-terminals
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)


def _labels(items: list[str] | None) -> dict[str, str]:
    from s3core.errors import InvalidArgument

    out: dict[str, str] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"--label must be KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def _client(args: argparse.Namespace) -> Any:
    from s3core.errors import NotFound
    from s3core.jobs.client import ControllerClient
    from s3core.rpc.auth import load_token

    address = args.controller or os.environ.get("S3_CONTROLLER", "")
    if not address:
        from s3core.runtime.local import LocalStack

        info = LocalStack(args.state_dir).get("controller")
        if info is None:
            raise NotFound(f"no controller: start one with `s3 up --controller` (state dir {args.state_dir}), "
                           "or pass --controller HOST:PORT / set S3_CONTROLLER")
        address = info.address
    return ControllerClient(address, token=load_token(None, args.token_file))


def _ago(ts: float) -> str:
    if not ts:
        return "–"
    d = max(0.0, time.time() - ts)
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.1f}h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _duration(job: Any) -> str:
    if not job.started_at:
        return "–"
    end = job.finished_at or time.time()
    d = max(0.0, end - job.started_at)
    return f"{d:.1f}s" if d < 120 else f"{d / 60:.1f}m" if d < 7200 else f"{d / 3600:.1f}h"


# the fields of s3.v1.Job (what the API carries), in its order
_API_FIELDS = ("id", "kind", "state", "reason", "progress", "progress_message", "attempts", "max_attempts",
               "created_at", "started_at", "finished_at", "updated_at", "heartbeat_at", "backend", "worker", "labels",
               "artifacts", "request_id", "workdir", "cancel_requested")


def _as_json(job: Any, full: bool) -> dict[str, Any]:
    out = {k: getattr(job, k) for k in _API_FIELDS}
    out["cancel_requested"] = bool(out["cancel_requested"])
    if full:
        out["spec_yaml"] = job.spec_yaml
        out["run_record"] = job.run_record
    return out


def _esc(text: str) -> str:
    """Text from the job store, safe inside rich markup (reasons hold things like `job.questions[0]`)."""
    from rich.markup import escape

    return escape(text or "")


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


# --- submit ------------------------------------------------------------------------------------------

def cmd_submit(args: argparse.Namespace) -> int:
    from s3core.errors import InvalidArgument

    if args.spec == "-":
        spec_yaml = sys.stdin.read()
    else:
        try:
            with open(args.spec, encoding="utf-8") as fh:
                spec_yaml = fh.read()
        except OSError as exc:
            raise InvalidArgument(f"{args.spec}: {exc.strerror or exc}") from None
    workdir = os.path.abspath(args.workdir or os.getcwd())
    c = _console()
    with _client(args) as client:
        job = client.submit(spec_yaml, kind=args.kind or "", labels=_labels(args.label),
                            request_id=args.request_id or "", workdir=workdir, validate_only=args.dry_run)
        if args.dry_run:
            c.print(f"[green]valid[/green] {job.kind} spec (max_attempts {job.max_attempts}); nothing was submitted")
            return 0
        c.print(f"job [bold]{job.id}[/bold] ({job.kind}) {_state(job.state)}"
                + (" [dim](an earlier submit with this request id)[/dim]" if args.request_id and job.state != "pending"
                   else ""))
        if args.quiet:
            print(job.id)
        if args.watch:
            return _watch(client, job.id, logs=True)
    return 0


# --- list / get --------------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _client(args) as client:
        jobs = client.list(kind=args.kind or "", state=args.state or "", labels=_labels(args.label),
                           limit=args.limit)
    if args.json:
        print(json.dumps([_as_json(j, full=False) for j in jobs], indent=1, ensure_ascii=False))
        return 0
    c = _console()
    if not jobs:
        c.print("no jobs" + (" match" if args.kind or args.state or args.label else ""))
        return 0
    t = Table(title=f"s3 jobs ({len(jobs)})")
    for col in ("id", "kind", "state", "progress", "attempts", "created", "duration", "backend", "labels", "reason"):
        t.add_column(col, justify="right" if col in ("progress", "attempts", "duration") else "left",
                     overflow="fold" if col == "reason" else "ellipsis", max_width=60 if col == "reason" else None)
    for j in jobs:
        t.add_row(j.id, j.kind, _state(j.state), f"{100 * j.progress:.0f}%", f"{j.attempts}/{j.max_attempts}",
                  _ago(j.created_at), _duration(j), j.backend,
                  _esc(",".join(f"{k}={v}" for k, v in sorted(j.labels.items()))), _esc(j.reason))
    c.print(t)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _client(args) as client:
        job = client.get(args.id)
    if args.json:
        print(json.dumps(_as_json(job, full=True), indent=1, ensure_ascii=False))
        return 0
    c = _console()
    t = Table(show_header=False, title=f"job {job.id}", title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    rows = [
        ("kind", job.kind), ("state", _state(job.state)), ("reason", _esc(job.reason) or "–"),
        ("progress", f"{100 * job.progress:.0f}%" + (f"  {_esc(job.progress_message)}" if job.progress_message else "")),
        ("attempts", f"{job.attempts} of {job.max_attempts}"), ("backend", job.backend),
        ("worker", _esc(job.worker) or "–"), ("created", _ago(job.created_at)), ("duration", _duration(job)),
        ("labels", _esc(", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))) or "–"),
        ("request id", _esc(job.request_id) or "–"), ("workdir", _esc(job.workdir) or "–"),
    ]
    if job.cancel_requested:
        rows.append(("cancel", "requested"))
    for k, v in rows:
        t.add_row(k, v)
    c.print(t)
    if job.artifacts:
        a = Table(title="artefacts", title_justify="left")
        a.add_column("name")
        a.add_column("path", overflow="fold")
        for k, v in sorted(job.artifacts.items()):
            a.add_row(_esc(k), _esc(v))
        c.print(a)
    rec = job.run_record
    if rec:
        r = Table(title=f"run record (attempt {rec.get('attempt', '?')}, {rec.get('outcome', '?')})",
                  title_justify="left", show_header=False)
        r.add_column("what", style="bold")
        r.add_column("value", overflow="fold")
        cost = rec.get("cost", {})
        r.add_row("cost", f"wall {cost.get('wall_s', 0):.1f}s, CPU {cost.get('cpu_s', 0):.1f}s, "
                          f"max RSS {cost.get('max_rss_mb', 0):.0f} MB"
                          + (f", GPU {cost['gpu_s']:.1f}s" if cost.get("gpu_s") else ""))
        code = rec.get("code", {})
        r.add_row("code", f"s3core {code.get('s3core', '?')}" + (f", git {code['git']}" if code.get("git") else "")
                  + f", Python {code.get('python', '?')}, host {code.get('host', '?')}")
        if rec.get("seeds"):
            r.add_row("seeds", ", ".join(f"{k}={v}" for k, v in rec["seeds"].items()))
        for name, inp in (rec.get("inputs") or {}).items():
            ident = inp.get("sha256") or inp.get("corpus_sha256") or inp.get("note") or inp.get("error") or ""
            label = "corpus sha256 " if inp.get("kind") == "index" else "sha256 " if inp.get("sha256") else ""
            r.add_row(_esc(f"input {name}"), _esc(f"{inp.get('path')}  {label}{ident}"))
        for role, m in (rec.get("models") or {}).items():
            r.add_row(f"model {role}", _esc(", ".join(f"{k}={v}" for k, v in m.items() if not isinstance(v, dict))))
        if rec.get("counters"):
            r.add_row("counters", _esc(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in rec["counters"].items())))
        if rec.get("results"):
            r.add_row("results", _esc(json.dumps(rec["results"], ensure_ascii=False)[:2000]))
        c.print(r)
        c.print("[dim]the full record (resolved config included): s3 jobs get ID --json[/dim]")
    if args.spec:
        c.print(job.spec_yaml, markup=False)
    return 0


# --- watch / logs / cancel ---------------------------------------------------------------------------

def _watch(client: Any, job_id: str, logs: bool, reconnect_s: float = 120.0) -> int:
    """Follow a job until it ends: state changes and log lines printed, progress as a live bar.
    Reconnects (resuming after the last event) when the controller or Redis is briefly away."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from s3core.errors import Unavailable

    c = _console()
    after = ""
    final = ""
    down_since = 0.0
    with Progress(TextColumn("[bold]{task.fields[job]}[/bold]"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=c, transient=False) as bar:
        task = bar.add_task("", total=1.0, job=job_id)
        while not final:
            try:
                for ev in client.watch(job_id, after=after):
                    after = ev.id
                    down_since = 0.0
                    stamp = time.strftime("%H:%M:%S", time.localtime(ev.time))
                    if ev.type == "state":
                        bar.console.print(f"{stamp} {_state(ev.state)}" + (f"  {_esc(ev.reason)}" if ev.reason else ""),
                                          highlight=False)
                        if ev.state in ("succeeded", "failed", "cancelled"):
                            final = ev.state
                            if ev.state == "succeeded":
                                bar.update(task, completed=1.0)
                        elif ev.state == "pending":
                            bar.update(task, completed=0.0, description="")
                    elif ev.type == "progress":
                        bar.update(task, completed=ev.progress, description=_esc(ev.message))
                    elif logs:
                        bar.console.print(Text.assemble((stamp, "dim"), " ", ev.message), highlight=False)
                if not final:
                    final = client.get(job_id).state
                    if final not in ("succeeded", "failed", "cancelled"):
                        final = ""
            except Unavailable as exc:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_s:
                    raise
                bar.update(task, description=f"[yellow]reconnecting: {_esc(str(exc)[:80])}[/yellow]")
                time.sleep(2.0)
    job = client.get(job_id)
    c.print(f"job {job.id} {_state(job.state)}" + (f": {_esc(job.reason)}" if job.reason else ""))
    if job.state == "succeeded" and job.artifacts:
        for k, v in sorted(job.artifacts.items()):
            c.print(f"  {k}: {v}", markup=False, highlight=False)
    return 0 if job.state == "succeeded" else 1


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch(client, args.id, logs=not args.no_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for ev in client.watch(args.id, history_only=not args.follow):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.time))
            att = f"[{ev.attempt}] " if ev.attempt else ""
            if ev.type == "log":
                print(f"{stamp} {att}{ev.message}", flush=True)
            elif ev.type == "state":
                print(f"{stamp} {att}-- {ev.state}" + (f": {ev.reason}" if ev.reason else ""), flush=True)
            elif args.progress:
                print(f"{stamp} {att}.. {100 * ev.progress:.0f}% {ev.message}", flush=True)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.id, reason=args.reason or "")
        c = _console()
        if job.state == "running":
            c.print(f"job {job.id}: cancel requested; the worker is being stopped")
            if args.wait:
                _watch(client, job.id, logs=False)
                return 0 if client.get(job.id).state == "cancelled" else 1
        else:
            c.print(f"job {job.id} {_state(job.state)}" + (f": {_esc(job.reason)}" if job.reason else ""))
    return 0


# --- parser ------------------------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="submit, list, watch and cancel jobs on the controller",
                       description="Jobs on the controller: index, precompute, eval, train, infer. A spec is the "
                                   "platform YAML config plus `kind:`, `job:` (the command's arguments), `run:` "
                                   "and `kubernetes:` (see docs/jobs.md).")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--controller", metavar="HOST:PORT",
                       help="controller address (default $S3_CONTROLLER, else the one `s3 up --controller` started)")
        q.add_argument("--token-file", help="file with the bearer token (default $S3_AUTH_TOKEN_FILE / $S3_AUTH_TOKEN)")
        q.add_argument("--state-dir", default=os.environ.get("S3_HOME", ".s3"),
                       help="where `s3 up` keeps its records (default .s3)")

    q = jsub.add_parser("submit", help="submit a job spec (YAML)")
    q.add_argument("spec", metavar="SPEC", help="job spec YAML file ('-' = stdin)")
    q.add_argument("--kind", choices=KINDS, help="job kind (or a top-level `kind:` in the spec)")
    q.add_argument("--label", action="append", metavar="KEY=VALUE", help="job label (repeatable)")
    q.add_argument("--request-id", help="idempotency key: submitting again with it returns the first job")
    q.add_argument("--workdir", help="where relative paths of the spec resolve (default: the current directory)")
    q.add_argument("--dry-run", action="store_true", help="validate the spec only; submit nothing")
    q.add_argument("--watch", action="store_true", help="follow the job until it ends (exit 0 only if it succeeds)")
    q.add_argument("--quiet", "-q", action="store_true", help="also print the bare job id on stdout")
    common(q)
    q.set_defaults(func=cmd_submit)

    q = jsub.add_parser("list", help="list jobs, newest first")
    q.add_argument("--kind", choices=KINDS)
    q.add_argument("--state", choices=STATES)
    q.add_argument("--label", action="append", metavar="KEY=VALUE", help="only jobs with this label (repeatable)")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default 50, max 1000)")
    q.add_argument("--json", action="store_true", help="JSON instead of a table")
    common(q)
    q.set_defaults(func=cmd_list)

    q = jsub.add_parser("get", help="one job: state, artefacts and its run record")
    q.add_argument("id", metavar="ID")
    q.add_argument("--json", action="store_true", help="the whole job as JSON (run record and spec included)")
    q.add_argument("--spec", action="store_true", help="also print the submitted spec")
    common(q)
    q.set_defaults(func=cmd_get)

    q = jsub.add_parser("watch", help="follow a job live: progress bar, state changes, log lines")
    q.add_argument("id", metavar="ID")
    q.add_argument("--no-logs", action="store_true", help="progress and state changes only")
    common(q)
    q.set_defaults(func=cmd_watch)

    q = jsub.add_parser("logs", help="print a job's log lines and state changes")
    q.add_argument("id", metavar="ID")
    q.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    q.add_argument("--progress", action="store_true", help="include progress events")
    common(q)
    q.set_defaults(func=cmd_logs)

    q = jsub.add_parser("cancel", help="cancel a job (pending: at once; running: its worker is stopped)")
    q.add_argument("id", metavar="ID")
    q.add_argument("--reason", help="recorded as the job's reason")
    q.add_argument("--wait", action="store_true", help="wait until the worker has stopped")
    common(q)
    q.set_defaults(func=cmd_cancel)
