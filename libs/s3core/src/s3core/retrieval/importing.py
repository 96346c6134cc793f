"""Import a prebuilt faiss index with its corpus as a dense index directory (no re-embedding).

The s3 authors and FlashRAG distribute an exact e5 index of wiki-18 (``e5_Flat.index``, 21M x 768)
next to the corpus (``wiki-18.jsonl``); embedding those passages again costs days of GPU time.
:func:`import_faiss_index` writes the usual index directory (:mod:`s3core.retrieval.index`):
the document store built from the corpus (row *i* of the index is line *i* of the corpus), the
faiss file (hard-linked when it is on the same file system, else copied, so the source stays
untouched), and a manifest naming the encoder that made the vectors -- the retriever encodes
queries with it (e5 encoders get the ``query: `` prefix).  Checked before anything is written:
the file is a faiss index, its metric is inner product, it holds exactly one vector per corpus
passage, and its dimension is the encoder's (read from the encoder's configuration files when they
are on this machine -- the embedded model, a local folder, the local hub cache; otherwise the
retriever checks it when it loads the encoder, and the manifest says ``encoder_dim_checked: false``).  The index type is read from the file (``flat``, ``flat-fp16``-like scalar-quantised,
``ivf-*``, ``hnsw*``); search parameters (``nprobe``, ``ef_search``) may be given as params.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from s3core import __version__ as S3CORE_VERSION
from s3core.data import iter_corpus
from s3core.errors import DataError, InvalidArgument
from s3core.io import atomic_dir, write_json

__all__ = ["describe_faiss_index", "encoder_dim", "import_faiss_index"]

_SEARCH_PARAMS = ("nprobe", "ef_search")


def describe_faiss_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{ntotal, dim, metric, index_type, faiss_class}`` of a faiss index file, read memory-mapped
    (a 65 GB flat index is not loaded into memory)."""
    import faiss

    p = Path(path)
    if not p.is_file():
        raise DataError(str(path), None, "no such file" if not p.exists() else "is not a file")
    try:
        index = faiss.read_index(str(p), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        try:
            index = faiss.read_index(str(p))
        except RuntimeError as exc:
            raise DataError(str(path), None, f"not a faiss index ({str(exc).splitlines()[0]})") from None
    inner = faiss.downcast_index(index)
    cls = type(inner).__name__
    metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2" if index.metric_type == faiss.METRIC_L2 \
        else str(index.metric_type)
    if cls == "IndexFlatIP" or cls == "IndexFlat":
        kind = "flat"
    elif cls.startswith("IndexHNSW"):
        kind = "hnsw"
    elif cls == "IndexIVFPQ":
        kind = "ivf-pq"
    elif cls.startswith("IndexIVF"):
        kind = "ivf-flat"
    elif cls == "IndexScalarQuantizer":
        kind = "flat-sq"
    else:
        kind = cls
    return {"ntotal": int(index.ntotal), "dim": int(index.d), "metric": metric, "index_type": kind, "faiss_class": cls}


def _encoder_json(encoder: str, rel: str) -> Any:
    """``rel`` (a JSON file of the encoder's folder) read from disk only: the embedded model, a local
    folder, or a hub name already in the local cache; None when it is not on this machine."""
    import json

    from s3core.retrieval.dense import resolve_encoder

    path, _ = resolve_encoder(encoder)
    f: Path | None = Path(path) / rel if Path(path).is_dir() else None
    if f is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(path, rel)  # the local cache only, never the network
        except Exception:  # noqa: BLE001 - not a hub name, no cache: not checkable here
            return None
        f = Path(hit) if isinstance(hit, str) else None
    if f is None or not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def encoder_dim(encoder: str) -> int | None:
    """The dimension of the vectors ``encoder`` makes, read from its configuration files without
    loading it (the last ``Dense`` layer's ``out_features``, else the pooled hidden size); None when
    its files are not on this machine."""
    modules = _encoder_json(encoder, "modules.json")
    mods = modules if isinstance(modules, list) else []
    dense = [m for m in mods if isinstance(m, dict) and str(m.get("type", "")).endswith("models.Dense")]
    if dense:
        cfg = _encoder_json(encoder, f"{dense[-1].get('path', '')}/config.json")
        out = cfg.get("out_features") if isinstance(cfg, dict) else None
        return int(out) if isinstance(out, int) else None
    cfg = _encoder_json(encoder, "config.json")
    if not isinstance(cfg, dict):
        return None
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


def _place(src: Path, dst: Path) -> str:
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy"


def import_faiss_index(faiss_path: str | os.PathLike[str], corpus_path: str | os.PathLike[str],
                       out_dir: str | os.PathLike[str], encoder: str, *, name: str | None = None,
                       params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir`` as a dense index over ``corpus_path`` whose vectors are ``faiss_path``'s.

    ``params`` may set ``query_prefix`` / ``passage_prefix`` (default: ``query: `` / ``passage: ``
    for e5 encoders), ``max_seq_length`` and the search parameters ``nprobe`` / ``ef_search``.
    Returns the manifest."""
    from s3core.retrieval.build import scan_corpus
    from s3core.retrieval.dense import FAISS_FILE, default_prefixes
    from s3core.retrieval.index import FORMAT_VERSION, MANIFEST, check_index_out
    from s3core.retrieval.store import DocStoreWriter

    if not encoder or not encoder.strip():
        raise InvalidArgument("--encoder is required: the model that embedded the index's vectors (e.g. intfloat/e5-base-v2)")
    extra = dict(params or {})
    unknown = set(extra) - {"query_prefix", "passage_prefix", "max_seq_length", *_SEARCH_PARAMS}
    if unknown:
        raise InvalidArgument(f"unknown import parameter(s): {', '.join(sorted(unknown))}")
    src, corpus, out = Path(faiss_path), Path(corpus_path), Path(out_dir)
    check_index_out(out, corpus)
    if src.resolve().parent == out.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise InvalidArgument(f"--out {out} holds the faiss file being imported; write the index elsewhere")
    desc = describe_faiss_index(src)
    if desc["metric"] != "ip":
        raise InvalidArgument(f"{src}: metric {desc['metric']}; the dense retriever ranks by inner product "
                              "(an IP index over normalised vectors, as e5_Flat.index is)")
    want_dim = encoder_dim(encoder)
    if want_dim is not None and want_dim != desc["dim"]:
        raise InvalidArgument(f"{src} has vectors of dimension {desc['dim']} but encoder {encoder!r} makes "
                              f"{want_dim}-dimensional ones: the index was not made with this encoder")
    sha, _ = scan_corpus(corpus)
    qp, pp = default_prefixes(encoder)
    full = {"index_type": desc["index_type"], "dim": desc["dim"], "query_prefix": extra.pop("query_prefix", qp),
            "passage_prefix": extra.pop("passage_prefix", pp), **extra,
            "imported": {"from": str(src.resolve()), "faiss_class": desc["faiss_class"],
                         "encoder_dim_checked": want_dim is not None}}
    with atomic_dir(out) as tmp:
        writer = DocStoreWriter(tmp)
        try:
            for doc in iter_corpus(corpus):
                writer.add(doc)
                if len(writer) > desc["ntotal"]:
                    raise InvalidArgument(f"{corpus} has more passages than {src} has vectors ({desc['ntotal']}): "
                                          "the index was not built from this corpus")
        except BaseException:
            writer.abort()
            raise
        n = writer.close()
        if n != desc["ntotal"]:
            raise InvalidArgument(f"{src} holds {desc['ntotal']} vectors but {corpus} has {n} passages: the index "
                                  "was not built from this corpus")
        full["imported"]["how"] = _place(src, tmp / FAISS_FILE)
        manifest = {
            "format_version": FORMAT_VERSION, "name": name or out.resolve().name, "backend": "dense",
            "corpus_path": str(corpus.resolve()), "corpus_sha256": sha, "num_documents": n, "encoder": encoder,
            "params": full, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "s3core_version": S3CORE_VERSION,
        }
        write_json(tmp / MANIFEST, manifest)
    return manifest
