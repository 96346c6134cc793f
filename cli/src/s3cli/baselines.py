"""`s3 precompute`, `s3 cache ...` and `s3 data filter`: the naive-RAG baselines in Redis."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any, Iterator

from s3cli.common import DEFAULT_STATE, _common_config, _console, _generator_flags, _load_config


def _local_redis_port(cfg: Any) -> int:
    """The port of the Redis `s3 up` started in $S3_HOME (default .s3) when it runs, else config redis.port."""
    from s3core.runtime.local import LocalStack

    info = LocalStack(DEFAULT_STATE).get("redis") if os.path.isdir(DEFAULT_STATE) else None
    return info.grpc_port if info is not None else cfg.redis.port


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


def _reference_key_parts(args: argparse.Namespace, k: int) -> Any:
    """The key fields the reference file lacks: from the index directory, and the generator's
    model and prompt version from a running generator (ModelInfo) or as given."""
    from s3core.cache.keys import index_fingerprint
    from s3core.errors import InvalidArgument
    from s3core.eval.reference_cache import ReferenceKeyParts
    from s3core.retrieval.index import index_info, read_manifest

    fp = index_fingerprint(index_info(read_manifest(args.index)))
    model, version = args.generator_model or "", args.prompt_version or ""
    if args.generator:
        from s3core.rpc.clients import GeneratorClient

        gen = GeneratorClient(args.generator)
        try:
            gen.wait_ready()
            info = gen.model_info()
        finally:
            gen.close()
        served = f"{info.backend}/{info.model}" if info.backend else info.model
        if model and model != served:
            raise InvalidArgument(f"--generator-model {model!r} but the generator at {args.generator} serves {served!r}")
        if version and version != info.prompt_version:
            raise InvalidArgument(f"--prompt-version {version!r} but the generator at {args.generator} reports "
                                  f"{info.prompt_version!r}")
        model, version = served, info.prompt_version
    if not model or not version:
        raise InvalidArgument("--generator-model and --prompt-version (or --generator ADDR to ask a running one) are "
                              "required: the reference file does not record which generator and prompt made its answers")
    return ReferenceKeyParts(index_fingerprint=fp, k=k, generator_model=model, prompt_version=version,
                             judge=args.judge == "model", judge_model=args.judge_model or "")


def cmd_cache_import_reference(args: argparse.Namespace) -> int:
    from s3core.errors import InvalidArgument
    from s3core.eval.job import check_index_dir, load_question_sets
    from s3core.eval.reference_cache import convert_reference_cache, read_reference_cache
    from s3core.io import check_output_file, write_json

    if args.k < 1:
        raise InvalidArgument(f"--k must be >= 1, got {args.k}")
    for flag in ("out", "summary_out"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag.replace('_', '-')}")
    check_index_dir(args.index)
    entries = read_reference_cache(args.file)
    sets = load_question_sets(args.questions)
    parts = _reference_key_parts(args, args.k)
    cache = None if args.out else _cache(args, _load_config(args))  # Redis checked before converting
    res = convert_reference_cache(entries, sets, parts, skip_unmatched=args.skip_unmatched, path=args.file)
    if args.out:
        from s3core.cache.baseline import BaselineCache

        n = BaselineCache.write_export(args.out, res.entries, namespace=args.namespace)
        where = f"{n} baselines -> {args.out} (load with `s3 cache import {args.out}`)"
    else:
        written = cache.put_many(res.entries, overwrite=args.overwrite)
        where = f"{written} written to {cache.url}, {len(res.entries) - written} already present"
    summary = {**res.to_json(), "key": {"index_fingerprint": parts.index_fingerprint, "k": parts.k,
                                        "generator_model": parts.generator_model,
                                        "prompt_version": parts.prompt_version, "judge_id": parts.judge_id}}
    con = _console()
    con.print(f"{args.file}: {res.total} entries, {len(res.entries)} converted, {res.unmatched} unmatched skipped, "
              f"{res.duplicates} duplicates; {where}")
    for name, d in res.per_dataset.items():
        con.print(f"  {name}: {d['converted']} of {d['entries']}, GenAcc {d['genacc']}, "
                  f"reference score 1: {d['reference_score']}, judge verdicts taken: {d['judged']}")
    for line in res.unmatched_examples[:5]:
        con.print(f"  unmatched: {line}")
    if args.summary_out:
        write_json(args.summary_out, summary)
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


def add_parsers(sub: Any) -> None:
    """`precompute` and `cache`."""
    p = sub.add_parser("precompute", help="compute and cache naive-RAG baselines in Redis (idempotent, resumable)")
    _service_flags(p)
    p.add_argument("--summary-out", help="also write the summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_precompute)

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
    q = csub.add_parser(
        "import-reference",
        help="load the s3 reference implementation's naive-RAG cache file ({dataset: {question: {answer, score}}})",
        description="Map the reference's rag_cache.json into our baseline cache. The file records only dataset, "
                    "question, answer and verdicts, so the rest of the key is stated here; every entry must match a "
                    "question of --questions, its answer is scored again with our rule, and nothing is written "
                    "unless every entry passes (refusals name file:line:column).")
    q.add_argument("file", help="the reference's cache file (e.g. data/rag_cache/rag_cache.json)")
    q.add_argument("--questions", nargs="+", required=True, metavar="FILE",
                   help="question files of the datasets in the file (their golds and ids)")
    q.add_argument("--index", required=True, help="index directory the reference's naive top-k came from "
                   "(e.g. an `s3 index import` of its e5_Flat.index)")
    q.add_argument("--k", type=int, default=3, help="naive-RAG top-k the reference used (default 3)")
    q.add_argument("--generator", help="host:port of a running generator: its model and prompt version key the "
                   "baselines")
    q.add_argument("--generator-model", help="generator model id as our generator reports it, e.g. "
                   "vllm/Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4 (without --generator)")
    q.add_argument("--prompt-version", help="generator prompt version to file them under (without --generator)")
    q.add_argument("--judge", choices=["model", "none"], default="model",
                   help="model (default): the reference's score is the judge's verdict where our span rule misses; "
                        "none: span-only baselines, scored from the answers alone")
    q.add_argument("--judge-model", help="judge model id (default: the generator model)")
    q.add_argument("--skip-unmatched", action="store_true",
                   help="skip (and count) entries whose question is not in --questions instead of refusing")
    q.add_argument("--out", help="write an export file (`s3 cache import` format) instead of writing to Redis")
    q.add_argument("--overwrite", action="store_true", help="replace baselines already in Redis")
    q.add_argument("--summary-out", help="also write the summary as JSON here")
    _redis_flags(q)
    _common_config(q)
    q.set_defaults(func=cmd_cache_import_reference)
    q = csub.add_parser("stats", help="count cached baselines")
    _redis_flags(q)
    _common_config(q)
    q.set_defaults(func=cmd_cache_stats)


def add_filter_parser(dsub: Any) -> None:
    """`data filter` (under `s3 data`)."""
    q = dsub.add_parser("filter", help="training-set filter: drop questions naive RAG answers and yes/no golds")
    _service_flags(q)
    q.add_argument("--out", required=True, help="filtered question file (FlashRAG jsonl)")
    q.set_defaults(func=cmd_data_filter)
