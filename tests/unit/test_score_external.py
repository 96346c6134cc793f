"""`s3 score` inputs (issue 15 §2): predictions / contexts rows matched to the questions, errors named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from s3core.errors import DataError, InvalidArgument
from s3core.eval.external import ScoreJob, load_contexts, load_predictions, parse_document, run_score_job
from s3core.types import Question

SETS = {
    "nq": [Question("1", "Capital of France?", ("Paris",), "nq"), Question("2", "Who wrote Hamlet?", ("Shakespeare",), "nq")],
    "popqa": [Question("1", "Largest planet?", ("Jupiter",), "popqa")],
}


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_predictions_match_by_dataset_and_id(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "p.jsonl", [
        {"id": "1", "dataset": "nq", "prediction": "Paris"},
        {"id": 2, "prediction": "Shakespeare"},  # unique id: no dataset needed; numbers are ids too
        {"id": "1", "dataset": "popqa", "prediction": "Jupiter"},
    ])
    assert load_predictions(p, SETS) == {("nq", "1"): "Paris", ("nq", "2"): "Shakespeare", ("popqa", "1"): "Jupiter"}


@pytest.mark.parametrize(
    ("rows", "line", "fragment"),
    [
        ([{"id": "9", "dataset": "nq", "prediction": "x"}], 1, "'9' is not a question of dataset 'nq'"),
        ([{"id": "9", "prediction": "x"}], 1, "'9' is not among the questions"),
        ([{"id": "1", "prediction": "x"}], 1, "in several datasets"),
        ([{"id": "2", "dataset": "tqa", "prediction": "x"}], 1, "dataset 'tqa'"),
        ([{"id": "2", "prediction": "x"}, {"id": "2", "dataset": "nq", "prediction": "y"}], 2, "second row for nq/2"),
        ([{"id": "2", "prediction": None}], 1, "'prediction' must be a string"),
        ([{"id": "2"}], 1, "missing 'prediction'"),
        ([{"prediction": "x"}], 1, "missing 'id'"),
        (["{nope"], 1, "invalid JSON"),
    ],
)
def test_bad_prediction_rows_name_file_and_line(tmp_path: Path, rows: list[Any], line: int, fragment: str) -> None:
    p = write_lines(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_predictions(p, SETS)
    assert f"p.jsonl:{line}" in str(info.value) and fragment in str(info.value)


def test_a_question_without_prediction_is_named(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "p.jsonl", [{"id": "2", "prediction": "x"}])
    with pytest.raises(InvalidArgument, match=r"no row for 2 question\(s\): nq/1, popqa/1"):
        load_predictions(p, SETS)


def test_context_documents_in_every_form(tmp_path: Path) -> None:
    assert parse_document("plain passage", 1).text == "plain passage"
    d = parse_document({"document": {"id": "7", "contents": '"Paris"\nCapital of France.'}, "score": 3.2}, 1)
    assert (d.id, d.title, d.text) == ("7", "Paris", "Capital of France.")  # a Search-R1 /retrieve hit
    d = parse_document({"title": "T", "text": "body"}, 4)
    assert (d.id, d.title, d.text) == ("ctx4", "T", "body")
    assert parse_document({"id": 3, "text": "only text"}, 1).title == ""
    with pytest.raises(ValueError, match="contents"):
        parse_document({"id": 3}, 1)
    p = write_lines(tmp_path / "c.jsonl", [
        {"id": "1", "dataset": "nq", "documents": ["Paris is the capital of France."]},
        {"id": "2", "documents": []},
        {"id": "1", "dataset": "popqa", "documents": [{"contents": '"Jupiter"\nThe largest planet.'}]},
    ])
    ctx = load_contexts(p, SETS)
    assert [d.title for d in ctx[("popqa", "1")]] == ["Jupiter"] and ctx[("nq", "2")] == []
    bad = write_lines(tmp_path / "b.jsonl", [{"id": "2", "documents": [5]}])
    with pytest.raises(DataError, match=r"b.jsonl:1: documents\[0\]"):
        load_contexts(bad, SETS)


def test_score_predictions_on_real_mirage(shared_data: Path, tmp_path: Path) -> None:
    """Offline scoring of another system's answers on MIRAGE: s3 eval's results.json format plus
    mc_accuracy; the per-row choice in scored.jsonl; "A: no" is no longer right against gold A."""
    qfile = shared_data / "mirage" / "bioasq.dev.jsonl"
    rows = [json.loads(x) for x in qfile.read_text().splitlines()]
    forms = ["{g}", "{w}: {gt}", "({g})", "{gt}", "{g}: {wt}"]  # right, mixed, right, right, mixed
    preds = []
    for i, r in enumerate(rows):
        opts, g = r["metadata"]["options"], r["golden_answers"][0]
        w = next(k for k in opts if k != g)
        preds.append({"id": r["id"], "prediction": forms[i % 5].format(g=g, w=w, gt=opts[g], wt=opts[w])})
    p = write_lines(tmp_path / "preds.jsonl", preds)
    res = run_score_job(ScoreJob(questions=[str(qfile)], predictions=str(p), out=str(tmp_path / "out"),
                                 show_progress=False))
    r = res["datasets"]["bioasq"]
    right = sum(1 for i in range(len(rows)) if i % 5 in (0, 2, 3))
    assert r["n"] == len(rows) and r["mc"] == len(rows)
    assert r["mc_accuracy"] == pytest.approx(right / len(rows)) == pytest.approx(r["genacc"])
    assert r["answer_recall@k"] is None and res["method"] == "preds" and res["config"]["judge"] == "none"
    scored = [json.loads(x) for x in (tmp_path / "out" / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == len(rows)
    assert {k for k in scored[0]} >= {"id", "dataset", "em", "f1", "span", "genacc", "choice"}
    assert [s["choice"] is None for s in scored[:5]] == [False, True, False, False, True]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]["bioasq"] == r


def test_score_job_refuses_two_sources(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        run_score_job(ScoreJob(questions=["q"], out=str(tmp_path), predictions="a", contexts="b"))


def test_contexts_go_to_the_generator_and_are_scored(tmp_path: Path) -> None:
    from s3core.eval.external import _given
    from s3core.eval.runner import evaluate

    p = write_lines(tmp_path / "c.jsonl", [
        {"id": "1", "dataset": "nq", "documents": ["Paris is the capital of France."]},
        {"id": "2", "documents": []},
        {"id": "1", "dataset": "popqa", "documents": [{"contents": '"Jupiter"\nThe largest planet.'}]},
    ])
    seen: list[tuple[str, list[str]]] = []

    def answer(items: Any) -> list[str]:
        seen.extend((q, [d.text for d in docs]) for q, docs in items)
        return [docs[0].title or docs[0].text.split()[0] if docs else "no idea" for q, docs in items]

    out = evaluate(SETS, "ctx", answer=answer, judge=None, search=None, show_progress=False,
                   method_spec=_given("ctx", load_contexts(p, SETS), contexts=True))
    assert ("Capital of France?", ["Paris is the capital of France."]) in seen and len(seen) == 3
    assert out.datasets["nq"].genacc == pytest.approx(0.5) and out.datasets["popqa"].genacc == 1.0
    assert out.datasets["nq"].answer_recall_at_k == pytest.approx(0.5)


def test_reference_context_file_on_real_popqa(shared_data: Path, tmp_path: Path) -> None:
    """The reference's evaluation input ({question: {golden_answers, context_with_info}}), built here
    from PopQA questions and their gold passages, is read back into the same documents."""
    from s3core.data import load_questions
    from s3core.data.io import parse_contents

    qs = load_questions(shared_data / "wiki_qa" / "popqa.dev.jsonl", limit=6)
    need = {i for q in qs for i in q.metadata["gold_passage_ids"]}
    corpus = {}
    with (shared_data / "wiki_corpus.jsonl").open() as fh:
        for line in fh:
            d = json.loads(line)
            if d["id"] in need:
                corpus[d["id"]] = parse_contents(d["contents"])
    ref = {"An unrelated question from another set?": {"golden_answers": ["x"], "context_with_info": ""}}
    for q in qs:
        ctx = "".join(f"Doc {n} (Title: {corpus[i][0]})\n{corpus[i][1]}\n\n"
                      for n, i in enumerate(q.metadata["gold_passage_ids"], start=1))
        ref["  " + q.question + " "] = {"golden_answers": list(q.golden_answers), "context_with_info": ctx}
    p = tmp_path / "s3_contexts.json"
    p.write_text(json.dumps(ref, indent=2))
    got = load_contexts(p, {"popqa": qs})
    for q in qs:
        docs = got[("popqa", q.id)]
        assert [(d.title, d.text) for d in docs] == [(corpus[i][0], " ".join(corpus[i][1].split()))
                                                     for i in q.metadata["gold_passage_ids"]]
    del ref[next(k for k in ref if qs[2].question in k)]
    p.write_text(json.dumps(ref))
    with pytest.raises(InvalidArgument, match=f"no entry for 1 question.*popqa/{qs[2].id}"):
        load_contexts(p, {"popqa": qs})
