"""Writing results: results.json, predictions.jsonl and the paper's "GenAcc (EM)" table."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from s3core.eval.runner import EvalOutcome
from s3core.io import atomic_open, write_json, write_jsonl


def results_json(outcome: EvalOutcome, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": outcome.method,
        "datasets": {name: r.to_json() for name, r in outcome.datasets.items()},
        "average": outcome.average(),
        "seconds": round(outcome.seconds, 2),
        "config": config,
    }


def write_outcome(out_dir: str | Path, outcome: EvalOutcome, config: dict[str, Any]) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = results_json(outcome, config)
    write_jsonl(out / "predictions.jsonl", (asdict(p) for p in outcome.predictions))
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
    return "\n".join(lines) + "\n"


def load_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
