"""Faiss index types for the dense backend: names → ``index_factory`` strings, training, search knobs.

Every index uses ``METRIC_INNER_PRODUCT`` over L2-normalised vectors (so scores are cosines).

=============  ===========================  ========================================================
index type     faiss                        trade-off
=============  ===========================  ========================================================
``flat``       ``IndexFlatIP``              exact; 4·d bytes a vector (21M × 768: 64.5 GB)
``flat-fp16``  ``SQfp16``                   ~exact; 2·d bytes a vector; no training
``ivf-flat``   ``IVF{nlist},Flat``          inverted lists over full vectors; probes ``nprobe`` lists
``ivf-fp16``   ``IVF{nlist},SQfp16``        the same over fp16 vectors (half the memory)
``ivf-pq``     ``IVF{nlist},PQ{m}x{nbits}``  compressed codes (m·nbits/8 bytes a vector); approximate
``hnsw``       ``HNSW{M},Flat``             graph; fast and accurate, full vectors + links in RAM
``hnsw-fp16``  ``HNSW{M},SQfp16``           the graph over fp16 vectors
``hnsw-sq8``   ``HNSW{M},SQ8``              the graph over 8-bit scalar-quantised vectors (trained)
=============  ===========================  ========================================================

IVF types and ``hnsw-sq8`` are trained on a sample of the vectors (``train_size``; IVF uses
spherical k-means).  Search-time parameters (``nprobe`` for IVF, ``ef_search`` for HNSW) are stored
in the manifest's ``params`` and applied by :func:`apply_search_params` when an index is loaded.
Bad combinations raise :class:`~s3core.errors.InvalidArgument` before any work is done where
possible (e.g. ``pq_m`` not dividing the dimension, ``nprobe`` > ``nlist``), and otherwise as soon
as the corpus size is known (``nlist`` larger than the training sample).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from s3core.errors import InvalidArgument

INDEX_TYPES: dict[str, str] = {
    "flat": "exact inner product (IndexFlatIP)",
    "flat-fp16": "exact scan over fp16 vectors (scalar quantizer fp16)",
    "ivf-flat": "inverted file over full vectors",
    "ivf-fp16": "inverted file over fp16 vectors",
    "ivf-pq": "inverted file over product-quantised codes",
    "hnsw": "HNSW graph over full vectors",
    "hnsw-fp16": "HNSW graph over fp16 vectors",
    "hnsw-sq8": "HNSW graph over 8-bit scalar-quantised vectors",
}
FP16_VARIANT = {"flat": "flat-fp16", "ivf-flat": "ivf-fp16", "hnsw": "hnsw-fp16"}
IVF_TYPES = ("ivf-flat", "ivf-fp16", "ivf-pq")
HNSW_TYPES = ("hnsw", "hnsw-fp16", "hnsw-sq8")
DEFAULT_INDEX_TYPE = "flat"

# the build parameters this module owns (everything else in a dense params dict is the encoder's)
ANN_KEYS = ("index_type", "fp16", "nlist", "nprobe", "pq_m", "pq_nbits", "hnsw_m", "ef_construction",
            "ef_search", "train_size")
_ONLY_FOR: dict[str, tuple[str, ...]] = {
    "nlist": IVF_TYPES, "nprobe": IVF_TYPES, "pq_m": ("ivf-pq",), "pq_nbits": ("ivf-pq",),
    "hnsw_m": HNSW_TYPES, "ef_construction": HNSW_TYPES, "ef_search": HNSW_TYPES,
    "train_size": (*IVF_TYPES, "hnsw-sq8"),
}
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_EF_SEARCH = 128
DEFAULT_PQ_NBITS = 8
MIN_TRAIN_SIZE = 100_000  # default training sample: max(64 · nlist, this), capped at the corpus size


def _int_param(p: dict[str, Any], key: str, lo: int = 1, hi: int | None = None) -> int | None:
    v = p.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        else:
            raise InvalidArgument(f"{key} must be an integer, got {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise InvalidArgument(f"{key} must be {bound}, got {v}")
    return v


def canonical_type(index_type: str | None, fp16: Any = False) -> str:
    """The index type name after applying ``fp16`` (``flat`` + fp16 → ``flat-fp16``)."""
    t = (index_type or DEFAULT_INDEX_TYPE).strip().lower()
    if t not in INDEX_TYPES:
        raise InvalidArgument(f"unknown index type {index_type!r} (known: {', '.join(INDEX_TYPES)})")
    if fp16 not in (None, False, True, 0, 1):
        raise InvalidArgument(f"fp16 must be true or false, got {fp16!r}")
    if fp16:
        if t == "ivf-pq" or t == "hnsw-sq8":
            raise InvalidArgument(f"fp16 does not apply to index type {t} (its vectors are already quantised); "
                                  f"the fp16 types are {', '.join(FP16_VARIANT.values())}")
        t = FP16_VARIANT.get(t, t)
    return t


def pq_divisors(dim: int, limit: int = 12) -> list[int]:
    """The largest values of ``pq_m`` that divide ``dim`` and leave sub-vectors of >= 4 dimensions."""
    divs = [m for m in range(1, dim + 1) if dim % m == 0 and dim // m >= 4]
    return divs[-limit:] if len(divs) > limit else divs


def check_ann_params(params: dict[str, Any], dim: int | None = None) -> dict[str, Any]:
    """Validate the index part of ``params`` (before any vector exists); returns the ANN keys only,
    with ``index_type`` canonical and ``fp16`` folded into it.  ``dim`` (when known) checks ``pq_m``."""
    t = canonical_type(params.get("index_type"), params.get("fp16", False))
    out: dict[str, Any] = {"index_type": t}
    for key, types in _ONLY_FOR.items():
        if params.get(key) is not None and t not in types:
            raise InvalidArgument(f"{key} applies to index type(s) {', '.join(types)}, not {t}")
    for key in ("nlist", "nprobe", "pq_m", "hnsw_m", "ef_construction", "ef_search", "train_size"):
        v = _int_param(params, key)
        if v is not None:
            out[key] = v
    nbits = _int_param(params, "pq_nbits", 1, 16)
    if nbits is not None:
        out["pq_nbits"] = nbits
    if out.get("nlist") is not None and out.get("nprobe") is not None and out["nprobe"] > out["nlist"]:
        raise InvalidArgument(f"nprobe={out['nprobe']} is larger than nlist={out['nlist']}")
    if dim is not None and out.get("pq_m") is not None and dim % out["pq_m"]:
        raise InvalidArgument(
            f"pq_m={out['pq_m']} does not divide the vector dimension {dim}; "
            f"pick one of {', '.join(map(str, pq_divisors(dim)))}"
        )
    return out


def default_pq_m(dim: int) -> int:
    """The largest divisor of ``dim`` up to 96 that leaves sub-vectors of >= 8 dimensions (768 → 96,
    384 → 48): faiss encodes 8-d sub-vectors ~3x faster than 12-d ones, and 96 bytes a vector recall
    more than 64 (bench/ann_scale.py)."""
    return max([m for m in range(1, 97) if dim % m == 0 and dim // m >= 8] or [1])


def auto_nlist(n: int) -> int:
    """Default number of IVF lists: the power of two at or below 4·√n, at most n / 39 (faiss wants
    about 39 training points a centroid), at least 1."""
    target = max(1, int(4 * math.sqrt(max(n, 1))))
    nlist = 1 << (target.bit_length() - 1)
    return max(1, min(nlist, n // 39))


def resolve_ann_params(params: dict[str, Any], dim: int, n: int) -> dict[str, Any]:
    """Fill the defaults that depend on the corpus (``n`` vectors of ``dim``) and check the rest.

    Returns the ANN keys as they go into the manifest: every parameter the index was built with,
    plus ``factory`` (the faiss ``index_factory`` string)."""
    if n < 1:
        raise InvalidArgument("the corpus has no documents")
    p = check_ann_params(params, dim)
    t = p["index_type"]
    if t in IVF_TYPES:
        nlist = p.get("nlist") or auto_nlist(n)
        p["nlist"] = nlist
        p.setdefault("nprobe", min(nlist, max(16, nlist // 64)))
        if p["nprobe"] > nlist:
            raise InvalidArgument(f"nprobe={p['nprobe']} is larger than nlist={nlist}")
    if t == "ivf-pq":
        if p.get("pq_m") is None:
            p["pq_m"] = default_pq_m(dim)
        p.setdefault("pq_nbits", DEFAULT_PQ_NBITS)
    if t in HNSW_TYPES:
        p.setdefault("hnsw_m", DEFAULT_HNSW_M)
        p.setdefault("ef_construction", DEFAULT_EF_CONSTRUCTION)
        p.setdefault("ef_search", DEFAULT_EF_SEARCH)
    if needs_training(t):
        want = p.get("train_size") or max(64 * p.get("nlist", 0), MIN_TRAIN_SIZE)
        p["train_size"] = min(int(want), n)
        sample = p["train_size"]
        if t in IVF_TYPES and p["nlist"] > sample:
            raise InvalidArgument(
                f"nlist={p['nlist']} is larger than the training sample of {sample} vectors "
                f"({n} documents); use nlist <= {max(1, sample // 39)} (about 39 vectors a list)"
            )
        if t == "ivf-pq" and sample < (1 << p["pq_nbits"]):
            raise InvalidArgument(
                f"ivf-pq with pq_nbits={p['pq_nbits']} needs at least {1 << p['pq_nbits']} training vectors, "
                f"the sample has {sample}; use a smaller pq_nbits or another index type"
            )
    p["factory"] = factory_string(p)
    return p


def factory_string(p: dict[str, Any]) -> str:
    t = p["index_type"]
    if t == "flat":
        return "Flat"
    if t == "flat-fp16":
        return "SQfp16"
    if t == "ivf-flat":
        return f"IVF{p['nlist']},Flat"
    if t == "ivf-fp16":
        return f"IVF{p['nlist']},SQfp16"
    if t == "ivf-pq":
        return f"IVF{p['nlist']},PQ{p['pq_m']}x{p['pq_nbits']}np"  # np: no polysemous training (unused, slow)
    codec = {"hnsw": "Flat", "hnsw-fp16": "SQfp16", "hnsw-sq8": "SQ8"}[t]
    return f"HNSW{p['hnsw_m']},{codec}"


def needs_training(index_type: str) -> bool:
    return index_type in IVF_TYPES or index_type == "hnsw-sq8"


def new_index(p: dict[str, Any], dim: int) -> Any:
    """An empty (untrained where it applies) faiss index for resolved params ``p``."""
    import faiss

    t = p["index_type"]
    if t == "flat":
        return faiss.IndexFlatIP(dim)  # exactly the index older builds wrote
    index = faiss.index_factory(dim, factory_string(p), faiss.METRIC_INNER_PRODUCT)
    if t in HNSW_TYPES:
        faiss.downcast_index(index).hnsw.efConstruction = int(p["ef_construction"])
    if t in IVF_TYPES:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.spherical = True  # centroids on the unit sphere: the right k-means for cosine
    apply_search_params(index, p)
    return index


def train(index: Any, sample: np.ndarray) -> None:
    """Train ``index`` on ``sample`` (float32, one row a vector) when it needs training."""
    if index.is_trained:
        return
    x = np.ascontiguousarray(sample, dtype=np.float32)
    index.train(x)


def apply_search_params(index: Any, params: dict[str, Any]) -> None:
    """Set ``nprobe`` (IVF) / ``efSearch`` (HNSW) from ``params`` on a built or loaded index."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and params.get("nprobe"):
        ivf.nprobe = min(int(params["nprobe"]), int(ivf.nlist))
    if params.get("ef_search"):
        inner = faiss.downcast_index(index)
        hnsw = getattr(inner, "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = int(params["ef_search"])


def bytes_per_vector(index_type: str, dim: int, pq_m: int = 96, pq_nbits: int = 8, hnsw_m: int = 32) -> float:
    """Approximate resident bytes a vector costs in an index of this type (for sizing)."""
    code = {"flat": 4 * dim, "flat-fp16": 2 * dim, "ivf-flat": 4 * dim, "ivf-fp16": 2 * dim,
            "ivf-pq": math.ceil(pq_m * pq_nbits / 8), "hnsw": 4 * dim, "hnsw-fp16": 2 * dim, "hnsw-sq8": dim}[index_type]
    if index_type in IVF_TYPES:
        return code + 8  # the 64-bit id stored in the inverted list
    if index_type in HNSW_TYPES:
        # level 0 keeps 2·M neighbours of 4 bytes; upper levels add ~1/M of that; plus level bookkeeping
        return code + 2 * hnsw_m * 4 * (1 + 1 / hnsw_m) + 12
    return code
