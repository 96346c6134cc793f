"""Writing results: results.json, predictions.jsonl, trajectories.jsonl (s3 methods), the paper's
"GenAcc (EM)" table (results.md) and its plot (results.png).

``trajectories.jsonl`` holds one JSON object per question::

    {"dataset": ..., "id": ..., "method": ..., "ablation": "none" | "no_selection" | ...,
     "context_doc_ids": [...],            # the documents the generator got for this method
     "trajectory": {...}}                 # searcher_pb2.Trajectory as MessageToDict
                                          # (proto field names; int64 fields are strings)

:func:`read_trajectory_record` turns a line back into a :class:`~s3core.search.trajectory.Trajectory`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from s3core.eval.methods import S3_VARIANTS
from s3core.eval.runner import EvalOutcome
from s3core.io import atomic_open, write_json, write_jsonl
from s3core.search.trajectory import Trajectory

TRAJECTORIES_FILE = "trajectories.jsonl"
PLOT_FILE = "results.png"


def results_json(outcome: EvalOutcome, config: dict[str, Any]) -> dict[str, Any]:
    res = {
        "method": outcome.method,
        "datasets": {name: r.to_json() for name, r in outcome.datasets.items()},
        "average": outcome.average(),
        "seconds": round(outcome.seconds, 2),
        "config": config,
    }
    if outcome.trajectories:  # methods that ran s3 episodes: the prompt profile(s) they were rendered in
        res["searcher_prompt_profiles"] = sorted({t.prompt_profile or "unrecorded" for _, _, t, _ in outcome.trajectories})
    return res


def write_outcome(out_dir: str | Path, outcome: EvalOutcome, config: dict[str, Any]) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = results_json(outcome, config)
    write_jsonl(out / "predictions.jsonl", (asdict(p) for p in outcome.predictions))
    if outcome.trajectories:
        write_jsonl(out / TRAJECTORIES_FILE, (
            trajectory_record(ds, qid, outcome.method, traj, doc_ids) for ds, qid, traj, doc_ids in outcome.trajectories
        ))
    write_json(out / "results.json", res)
    with atomic_open(out / "results.md") as fh:
        fh.write(markdown_table([res]))
    return res


def _cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "–"
    return f"{100 * r['genacc']:.1f} ({100 * r['em']:.1f})"


def table_rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    datasets: list[str] = []
    for res in results:
        for name in res["datasets"]:
            if name not in datasets:
                datasets.append(name)
    header = ["Method", *datasets, "Avg."]
    rows = [
        [res["method"], *[_cell(res["datasets"].get(d)) for d in datasets], _cell(res["average"])]
        for res in results
    ]
    return header, rows


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """The paper's Table 1 layout: one row per method, cells ``GenAcc (EM)`` in percent."""
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    n = {d: r.get("n") for res in results for d, r in res["datasets"].items()}
    lines.append("")
    lines.append("GenAcc (EM), percent. Questions per dataset: " + ", ".join(f"{d} {v}" for d, v in n.items()) + ".")
    mc = sorted({d for res in results for d, r in res["datasets"].items() if r.get("mc")})
    if mc:
        lines.append("Multiple choice (scored by the chosen option): " + ", ".join(mc) + ".")
    empty = {d: r.get("empty_golds", 0) for res in results for d, r in res["datasets"].items() if r.get("empty_golds")}
    if empty:
        lines.append("Gold answers that normalise to nothing and can never match: "
                     + ", ".join(f"{d} {v}" for d, v in empty.items()) + ".")
    return "\n".join(lines) + "\n"


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_summary(out_dir: str | Path, results: Sequence[dict[str, Any]]) -> None:
    """``results.md`` (every method x dataset) and ``results.png`` (the same as a bar chart)."""
    from s3core.eval.plot import write_results_plot

    out = Path(out_dir)
    with atomic_open(out / "results.md") as fh:
        fh.write(markdown_table(results))
    if results:
        write_results_plot(out / PLOT_FILE, results)


# --- trajectories --------------------------------------------------------------------------------

def trajectory_record(dataset: str, qid: str, method: str, traj: Trajectory, context_doc_ids: Sequence[str]) -> dict[str, Any]:
    from s3core.rpc.convert import trajectory_to_json

    return {
        "dataset": dataset,
        "id": qid,
        "method": method,
        "ablation": S3_VARIANTS.get(method, "none"),
        "context_doc_ids": list(context_doc_ids),
        "trajectory": trajectory_to_json(traj),
    }


def read_trajectory_record(record: dict[str, Any]) -> Trajectory:
    from s3core.rpc.convert import trajectory_from_json

    return trajectory_from_json(record["trajectory"])
