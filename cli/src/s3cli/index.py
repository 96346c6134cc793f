"""`s3 index`: build an index from a corpus, or import a prebuilt faiss index."""

from __future__ import annotations

import argparse
from typing import Any

from s3cli.common import _console


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


def add_parser(sub: Any) -> None:
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
