"""ANN index build and search at wiki-18 scale (21M × 768) on synthetic clustered vectors.

The data: a mixture of Gaussians in a 256-dimensional subspace with a power-law spectrum (axis j
scaled by (j+1)^-1/2, like the PCA spectrum of real text embeddings), Zipf-sized clusters, a common
mean direction (real embeddings have pairwise cosines well above 0), mapped into ``--dim``
dimensions by a fixed random orthonormal map and L2-normalised.  It is regenerated
deterministically chunk by chunk (``--chunk`` vectors at a time; never all in memory), so recall
resembles real embeddings more than uniform noise would -- it is still synthetic: absolute recall
on e5-base-v2 embeddings of wiki-18 will differ.

Phases, each in its own child process so that its peak RSS is its own:

* ``ivfpq``: the IVF-PQ index of ``s3core.retrieval.ann`` (``IVF{nlist},PQ{m}x8np``, spherical k-means)
  over ``--n`` vectors: trained on the first ``--train-size`` vectors, then every chunk is generated
  and added; exact top-10 of ``--gt-queries`` queries is computed over the same chunks as they
  stream by (not counted in the build time).  Searched at several ``nprobe``.
* ``hnsw`` / ``hnsw-sq8``: HNSW over full / 8-bit vectors holds everything in RAM, so it runs on the
  first ``--hnsw-n`` vectors (default 1M, 3 GB; 21M would need ~70 GB) at several ``efSearch``.

Reported: build time (train + add), peak RSS, index file size, queries/s (``--qps-queries`` queries
in one batch, faiss's OpenMP threads), recall@10 (|approx top-10 ∩ exact top-10| / 10) and
recall 10@100 (exact top-10 found in the approximate top-100: what re-ranking could recover), and
the memory / number of GPUs a Flat fp32 or fp16 index of ``--n`` × ``--dim`` would need (80 GB
H100, 141 GB H200; ``--gpu-usable`` of the card for the vectors, the rest for CUDA, faiss scratch
and queries).  A rich table goes to stdout, everything to ``--out`` (JSON, rewritten after each
phase).  The last line is ``ratio=R`` with R = IVF-PQ recall@10 at the first ``--nprobe``.

Quick run (about a minute on an idle 2-core box)::

    python bench/ann_scale.py --n 200000 --hnsw-n 100000 --nlist 256 --out /tmp/ann_quick.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GPUS = {"H100-80GB": 80e9, "H200-141GB": 141e9}
RANK = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=21_000_000, help="vectors in the IVF-PQ index (default: %(default)s)")
    p.add_argument("--dim", type=int, default=768, help="vector dimension (default: %(default)s, e5-base-v2)")
    p.add_argument("--nlist", type=int, default=1024,
                   help="IVF lists (default %(default)s: assignment costs n·nlist·dim, sized for 2 cores)")
    p.add_argument("--pq-m", type=int, default=96,
                   help="PQ sub-quantisers = bytes a vector (default %(default)s: 8-d sub-vectors encode ~3x "
                        "faster than PQ64's 12-d ones in faiss, and recall more)")
    p.add_argument("--train-size", type=int, default=0,
                   help="IVF-PQ training vectors (default: max(39·nlist, 16384), at most n)")
    p.add_argument("--nprobe", default="16,32,64", help="comma-separated nprobe values to search with")
    p.add_argument("--hnsw-n", type=int, default=1_000_000,
                   help="vectors in the HNSW indexes (default %(default)s; 0 = skip HNSW)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours a node (default %(default)s)")
    p.add_argument("--ef-construction", type=int, default=40, help="HNSW efConstruction (default %(default)s)")
    p.add_argument("--ef-search", default="32,64,128,256", help="comma-separated efSearch values")
    p.add_argument("--hnsw-sq8-n", type=int, default=-1,
                   help="vectors in the HNSW-over-SQ8 index (default: --hnsw-n; 0 = skip)")
    p.add_argument("--chunk", type=int, default=200_000, help="vectors generated at a time (default %(default)s)")
    p.add_argument("--clusters", type=int, default=20_000, help="mixture components (default %(default)s)")
    p.add_argument("--gt-queries", type=int, default=200, help="queries with exact ground truth (default %(default)s)")
    p.add_argument("--qps-queries", type=int, default=1000, help="queries in the timed batch (default %(default)s)")
    p.add_argument("--gpu-usable", type=float, default=0.9,
                   help="fraction of a GPU's memory for the vectors (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/ann_scale.json", help="JSON results (default: %(default)s)")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this (child) process
    p.add_argument("--phase-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --- data ------------------------------------------------------------------------------------------

class Synth:
    """Deterministic clustered unit vectors, generated chunk by chunk (see the module docstring)."""

    def __init__(self, dim: int, clusters: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 7])
        rank = min(RANK, dim)
        q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        self.w = np.ascontiguousarray(q.T, dtype=np.float32)  # rank × dim, orthonormal rows
        self.spectrum = (1.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)
        self.centers = (rng.standard_normal((clusters, rank)) * self.spectrum).astype(np.float32)
        cnorm = float(np.sqrt((self.spectrum ** 2).sum()))
        self.mean = (rng.standard_normal(rank) * self.spectrum).astype(np.float32)  # norm ≈ cnorm
        popularity = 1.0 / np.arange(1, clusters + 1) ** 0.6
        self.cdf = np.cumsum(popularity / popularity.sum())
        self.sigma = 0.8
        self.rank, self.dim, self.seed, self.cnorm = rank, dim, seed, cnorm

    def _make(self, rng: np.random.Generator, size: int) -> np.ndarray:
        lab = np.minimum(np.searchsorted(self.cdf, rng.random(size)), len(self.cdf) - 1)
        u = rng.standard_normal((size, self.rank), dtype=np.float32)
        u *= self.sigma * self.spectrum
        u += self.centers[lab]
        u += self.mean
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        return u @ self.w  # an orthonormal map keeps unit norm

    def chunk(self, i: int, size: int) -> np.ndarray:
        return self._make(np.random.default_rng([self.seed, 1, i]), size)

    def queries(self, size: int) -> np.ndarray:
        return self._make(np.random.default_rng([self.seed, 2]), size)

    def stream(self, n: int, chunk: int):  # noqa: ANN201 - (start, vectors) pairs
        for i, start in enumerate(range(0, n, chunk)):
            yield start, self.chunk(i, min(chunk, n - start))


class TopK:
    """Exact top-k inner products of fixed queries, merged chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int = 10) -> None:
        self.q = queries
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, start: int, x: np.ndarray) -> None:
        s = self.q @ x.T
        k = min(self.k, s.shape[1])
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        cs = np.take_along_axis(s, part, axis=1)
        all_s = np.concatenate([self.scores, cs], axis=1)
        all_i = np.concatenate([self.ids, part + start], axis=1)
        order = np.argsort(-all_s, axis=1)[:, :self.k]
        self.scores = np.take_along_axis(all_s, order, axis=1)
        self.ids = np.take_along_axis(all_i, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def index_file_bytes(index: Any) -> int:
    import faiss

    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR", "/tmp"), suffix=".faiss") as fh:
        faiss.write_index(index, fh.name)
        return os.path.getsize(fh.name)


def search_table(index: Any, knob: str, values: list[int], q_gt: np.ndarray, truth: np.ndarray,
                 q_qps: np.ndarray) -> list[dict[str, Any]]:
    import faiss

    from s3core.retrieval.ann import apply_search_params

    rows = []
    for v in values:
        apply_search_params(index, {knob: v})
        if knob == "nprobe" and v > faiss.extract_index_ivf(index).nlist:
            continue
        _, found = index.search(q_gt, 100)
        t0 = time.perf_counter()
        index.search(q_qps, 10)
        dt = time.perf_counter() - t0
        rows.append({knob: v, "qps": round(len(q_qps) / dt, 1), "recall@10": round(recall(found[:, :10], truth), 4),
                     "recall10@100": round(recall(found, truth), 4)})
        log(f"  {knob}={v}: {rows[-1]}")
    return rows


# --- phases (each runs in a child process) ---------------------------------------------------------

def phase_ivfpq(a: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from s3core.retrieval import ann

    syn = Synth(a.dim, a.clusters, a.seed)
    queries = syn.queries(max(a.qps_queries, a.gt_queries))
    q_gt = queries[:a.gt_queries]
    train_size = a.train_size or min(a.n, max(39 * a.nlist, 16384))
    p = ann.resolve_ann_params({"index_type": "ivf-pq", "nlist": a.nlist, "pq_m": a.pq_m, "train_size": train_size},
                               a.dim, a.n)
    index = ann.new_index(p, a.dim)
    t0 = time.perf_counter()
    sample = np.concatenate([x for _, x in syn.stream(train_size, a.chunk)])
    gen_train = time.perf_counter() - t0
    log(f"ivfpq: training {p['factory']} on {len(sample)} vectors")
    t0 = time.perf_counter()
    ann.train(index, sample)
    train_s = time.perf_counter() - t0
    del sample
    log(f"ivfpq: trained in {train_s:.1f}s; adding {a.n} vectors")
    gt = TopK(q_gt)
    add_s = gen_s = gt_s = 0.0
    last = time.perf_counter()
    t_gen = time.perf_counter()
    for start, x in syn.stream(a.n, a.chunk):
        t1 = time.perf_counter()
        gen_s += t1 - t_gen
        index.add(x)
        t2 = time.perf_counter()
        gt.update(start, x)
        t_gen = time.perf_counter()
        add_s += t2 - t1
        gt_s += t_gen - t2
        if t_gen - last > 60:
            last = t_gen
            done = start + len(x)
            log(f"ivfpq: {done}/{a.n} added ({add_s:.0f}s add, {gen_s:.0f}s generate, {gt_s:.0f}s ground truth); "
                f"eta {(a.n - done) * (t_gen - t0 - train_s) / done:.0f}s")
    log(f"ivfpq: added in {add_s:.1f}s; searching")
    out = {"index": p["factory"], "n": a.n, "dim": a.dim, "train_size": train_size,
           "train_s": round(train_s, 1), "add_s": round(add_s, 1), "build_s": round(train_s + add_s, 1),
           "generate_s": round(gen_s + gen_train, 1), "ground_truth_s": round(gt_s, 1),
           "index_file_bytes": index_file_bytes(index),
           "search": search_table(index, "nprobe", [int(v) for v in a.nprobe.split(",")], q_gt, gt.ids,
                                  queries[:a.qps_queries]),
           "threads": faiss.omp_get_max_threads()}
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def phase_hnsw(a: argparse.Namespace, kind: str) -> dict[str, Any]:
    import faiss

    from s3core.retrieval import ann

    n = a.hnsw_n if kind == "hnsw" else (a.hnsw_sq8_n if a.hnsw_sq8_n >= 0 else a.hnsw_n)
    syn = Synth(a.dim, a.clusters, a.seed)
    queries = syn.queries(max(a.qps_queries, a.gt_queries))
    q_gt = queries[:a.gt_queries]
    p = ann.resolve_ann_params({"index_type": kind, "hnsw_m": a.hnsw_m, "ef_construction": a.ef_construction,
                                **({"train_size": min(n, a.chunk)} if kind == "hnsw-sq8" else {})}, a.dim, n)
    index = ann.new_index(p, a.dim)
    train_s = 0.0
    if ann.needs_training(kind):
        t0 = time.perf_counter()
        ann.train(index, syn.chunk(0, min(n, a.chunk)))
        train_s = time.perf_counter() - t0
    gt = TopK(q_gt)
    add_s = 0.0
    log(f"{kind}: adding {n} vectors to {p['factory']}")
    last = time.perf_counter()
    for start, x in syn.stream(n, a.chunk):
        t1 = time.perf_counter()
        index.add(x)
        add_s += time.perf_counter() - t1
        gt.update(start, x)
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            log(f"{kind}: {start + len(x)}/{n} added in {add_s:.0f}s")
    log(f"{kind}: added in {add_s:.1f}s; searching")
    out = {"index": p["factory"], "n": n, "dim": a.dim, "train_s": round(train_s, 1), "add_s": round(add_s, 1),
           "build_s": round(train_s + add_s, 1), "index_file_bytes": index_file_bytes(index),
           "search": search_table(index, "ef_search", [int(v) for v in a.ef_search.split(",")], q_gt, gt.ids,
                                  queries[:a.qps_queries]),
           "threads": faiss.omp_get_max_threads()}
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


# --- orchestration ---------------------------------------------------------------------------------

def extrapolate(a: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    from s3core.retrieval.ann import bytes_per_vector

    n, d = a.n, a.dim
    ex: dict[str, Any] = {"n": n, "dim": d, "gpu_usable_fraction": a.gpu_usable, "indexes": {}}
    sizes = {
        "flat (fp32)": 4 * n * d,
        "flat-fp16": 2 * n * d,
        f"ivf-pq (PQ{a.pq_m})": n * bytes_per_vector("ivf-pq", d, pq_m=a.pq_m),
        f"hnsw (M={a.hnsw_m}, fp32)": n * bytes_per_vector("hnsw", d, hnsw_m=a.hnsw_m),
        f"hnsw-sq8 (M={a.hnsw_m})": n * bytes_per_vector("hnsw-sq8", d, hnsw_m=a.hnsw_m),
    }
    for name, b in sizes.items():
        row: dict[str, Any] = {"bytes": int(b), "GB": round(b / 1e9, 1)}
        if not name.startswith("hnsw"):  # faiss has no GPU HNSW (CAGRA is another index)
            for g, cap in GPUS.items():
                row[f"gpus_{g}"] = max(1, math.ceil(b / (cap * a.gpu_usable)))
                row[f"pct_of_one_{g}"] = round(100 * b / cap, 1)
        ex["indexes"][name] = row
    return ex


def run_phase(a: argparse.Namespace, phase: str, argv: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    try:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--phase", phase, "--phase-out", path]
        t0 = time.perf_counter()
        # OpenMP threads that spin while waiting (libgomp's default) crawl on a shared, oversubscribed
        # machine (PQ training 8x slower with 2 threads than with 1); sleeping waits cost little here
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        subprocess.run(cmd, check=True, env=env)
        res = json.loads(Path(path).read_text())
        res["phase_wall_s"] = round(time.perf_counter() - t0, 1)
        return res
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=160)
    t = Table(title="ANN indexes on synthetic clustered vectors")
    for col in ("index", "n", "build s (train+add)", "peak RSS GB", "file GB", "knob", "queries/s", "recall@10",
                "recall 10@100"):
        t.add_column(col, justify="right" if col not in ("index", "knob") else "left")
    for key in ("ivfpq", "hnsw", "hnsw-sq8"):
        r = results.get(key)
        if not r:
            continue
        for j, s in enumerate(r["search"]):
            knob = next(k for k in s if k in ("nprobe", "ef_search"))
            first = j == 0
            t.add_row(r["index"] if first else "", f"{r['n']:,}" if first else "",
                      f"{r['build_s']} ({r['train_s']}+{r['add_s']})" if first else "",
                      f"{r['peak_rss_bytes'] / 1e9:.2f}" if first else "",
                      f"{r['index_file_bytes'] / 1e9:.2f}" if first else "",
                      f"{knob}={s[knob]}", f"{s['qps']:,.0f}", f"{s['recall@10']:.3f}", f"{s['recall10@100']:.3f}")
    c.print(t)
    ex = results["extrapolation"]
    t2 = Table(title=f"memory for {ex['n']:,} × {ex['dim']} (GPUs at {ex['gpu_usable_fraction']:.0%} usable)")
    for col in ("index", "GB", *[f"{g} GPUs (% of one)" for g in GPUS]):
        t2.add_column(col, justify="left" if col == "index" else "right")
    for name, row in ex["indexes"].items():
        t2.add_row(name, f"{row['GB']}", *[f"{row[f'gpus_{g}']} ({row[f'pct_of_one_{g}']}%)" if f"gpus_{g}" in row
                                           else "CPU only" for g in GPUS])
    c.print(t2)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.phase:
        res = phase_ivfpq(a) if a.phase == "ivfpq" else phase_hnsw(a, a.phase)
        Path(a.phase_out).write_text(json.dumps(res))
        return 0
    import faiss

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(a).items() if not k.startswith("phase")},
        "machine": {"cpus": os.cpu_count(), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
                    "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
                    "load_avg_at_start": os.getloadavg(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")},
        "data": "mixture of Gaussians in a 256-d power-law subspace, Zipf cluster sizes, common mean direction, "
                "orthonormal map to dim, unit norm; regenerated chunk by chunk (synthetic, not real embeddings)",
    }
    results["extrapolation"] = extrapolate(a, results)
    t0 = time.perf_counter()
    phases = ["ivfpq"]
    if a.hnsw_n > 0:
        phases.append("hnsw")
        if (a.hnsw_sq8_n if a.hnsw_sq8_n >= 0 else a.hnsw_n) > 0:
            phases.append("hnsw-sq8")
    for ph in phases:
        log(f"phase {ph}")
        results[ph] = run_phase(a, ph, argv)
        results["wall_s"] = round(time.perf_counter() - t0, 1)
        results["machine"]["load_avg_now"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    r10 = results["ivfpq"]["search"][0]["recall@10"] if results["ivfpq"]["search"] else 0.0
    print(f"results → {out}")
    print(f"ratio={r10:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
