"""Merge exactness: a flat index split into N shards, searched shard by shard and merged with
``s3core.retrieval.shards.merge_topk``, against one flat index over all the vectors.

Vectors are synthetic (normalised Gaussians, seeded), searched with faiss ``IndexFlatIP`` -- exact,
so any difference is the merge's.  For each shard count and k it reports the share of queries whose
merged ids equal the single index's ids in order, the largest score difference, and the queries
whose lists differ only among exactly equal scores (ties, which the merge orders by global row).
Scores equal within 1e-6 count as ties: float32 sums computed in different blocks can swap two passages
whose scores differ in the 7th digit.  The last line is ``ratio=X.XXXX`` = the share of (query, shards, k)
cases whose merged list equals the single index's, up to the order among such ties (goal 1.0).

    .venv/bin/python bench/shard_merge.py                    # 200k x 768, 1000 queries, 2/4/8 shards
    .venv/bin/python bench/shard_merge.py --n 50000 --dim 128
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--n", type=int, default=200_000, help="vectors (default 200,000)")
    p.add_argument("--dim", type=int, default=768, help="dimension (default 768, e5-base)")
    p.add_argument("--queries", type=int, default=1000, help="queries (default 1000)")
    p.add_argument("--shards", default="2,4,8", help="shard counts, comma-separated (default 2,4,8)")
    p.add_argument("--k", default="10,100", help="k values, comma-separated (default 10,100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import faiss
    from rich.console import Console
    from rich.table import Table

    from s3core.retrieval.shards import merge_topk

    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    xb = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    # queries near stored vectors, as real queries land near their passages
    xq = xb[rng.integers(0, args.n, args.queries)] + 0.3 * rng.standard_normal((args.queries, args.dim),
                                                                                  dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    ks = [int(x) for x in args.k.split(",")]
    whole = faiss.IndexFlatIP(args.dim)
    whole.add(xb)
    t0 = time.perf_counter()
    ref = {k: whole.search(xq, k) for k in ks}
    one_s = time.perf_counter() - t0
    rows_out = []
    same_total = cases = 0
    for n_shards in [int(x) for x in args.shards.split(",")]:
        bounds = np.linspace(0, args.n, n_shards + 1).astype(int)
        shards = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            idx = faiss.IndexFlatIP(args.dim)
            idx.add(xb[a:b])
            shards.append(idx)
        for k in ks:
            t0 = time.perf_counter()
            parts = [s.search(xq, k) for s in shards]
            scores, rows = merge_topk(parts, k, [int(b) for b in bounds[:-1]])
            merge_s = time.perf_counter() - t0
            ref_scores, ref_rows = ref[k]
            same_ids = np.all(rows == ref_rows, axis=1)
            score_diff = float(np.max(np.abs(scores - ref_scores.astype(np.float64))))
            same_scores = np.all(np.abs(scores - ref_scores) <= 1e-6, axis=1)
            ties_only = int(np.sum(~same_ids & same_scores))
            same = same_ids & same_scores
            same_total += int(same_scores.sum())  # identical, or differing only among tied scores
            cases += len(same)
            rows_out.append({"shards": n_shards, "k": k, "queries": args.queries,
                             "identical": float(same.mean()), "differ_only_in_ties": ties_only,
                             "max_score_diff": score_diff, "sharded_search_s": merge_s, "one_index_s": one_s})
    table = Table(title=f"sharded flat search vs one index ({args.n:,} x {args.dim}, {args.queries} queries)")
    for col in ("shards", "k", "identical ids+scores", "differ only in ties", "max |score diff|", "sharded s"):
        table.add_column(col, justify="right")
    for r in rows_out:
        table.add_row(str(r["shards"]), str(r["k"]), f"{r['identical']:.4f}", str(r["differ_only_in_ties"]),
                      f"{r['max_score_diff']:.2e}", f"{r['sharded_search_s']:.2f}")
    Console(width=120).print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows_out, fh, indent=2)
    print(f"ratio={same_total / cases:.4f}")  # 1.0: every difference is an order among tied scores
    return 0 if same_total == cases else 1


if __name__ == "__main__":
    raise SystemExit(main())
