"""The evaluation loop and report, with in-process answer/judge/search functions (unit level).

The real services are exercised end to end in tests/integration/test_eval_e2e.py.
"""

import json

import pytest

from s3core.errors import InvalidArgument
from s3core.eval.report import markdown_table, write_outcome
from s3core.eval.runner import evaluate
from s3core.types import Doc, Question

QS = {
    "toy": [
        Question("1", "Who wrote Hamlet?", ("William Shakespeare",), "toy"),
        Question("2", "Capital of France?", ("Paris",), "toy"),
        Question("3", "Largest planet?", ("Jupiter",), "toy"),
        Question("4", "Yes or no?", ("",), "toy"),  # empty gold: matches anything, must be counted
    ]
}
CORPUS = {
    "Who wrote Hamlet?": [Doc("d1", "Hamlet", "Hamlet is a play by William Shakespeare.", 2.0)],
    "Capital of France?": [Doc("d2", "France", "Lyon is a city.", 1.0)],
    "Largest planet?": [Doc("d3", "Jupiter", "Jupiter is the largest planet.", 1.5)],
    "Yes or no?": [],
}


def search(queries, k):
    return [CORPUS[q][:k] for q in queries]


def answer(items):
    out = []
    for q, docs in items:
        if not docs:
            out.append("I don't know")
        elif q.startswith("Who"):
            out.append("The William Shakespeare!")  # EM after normalisation
        elif q.startswith("Largest"):
            out.append("It is Jupiter")  # span, not EM
        else:
            out.append("Lyon")  # wrong
    return out


def test_naive_rag_scores_and_recall():
    judged = []

    def judge(items):
        judged.extend(items)
        return [r == "Lyon" and False for _, r, _ in items]

    out = evaluate(QS, "naive-rag", answer=answer, judge=judge, search=search, k=3, batch_size=3, show_progress=False)
    r = out.datasets["toy"]
    assert r.n == 4
    assert r.em == pytest.approx(1 / 4)
    # Hamlet (EM), Jupiter (span) and the empty gold (matches anything) span-match
    assert r.span == pytest.approx(3 / 4)
    assert r.genacc == pytest.approx(3 / 4)
    assert r.empty_golds == 1
    # only the one span failure is sent to the judge
    assert [x[1] for x in judged] == ["Lyon"]
    assert r.judge_calls == 1
    # gold in retrieved docs: Hamlet, Jupiter, and the empty gold? no docs -> False
    assert r.answer_recall_at_k == pytest.approx(2 / 4)


def test_judge_can_rescue_a_span_miss():
    out = evaluate(QS, "naive-rag", answer=answer, judge=lambda items: [True] * len(items), search=search,
                   k=3, show_progress=False)
    assert out.datasets["toy"].genacc == 1.0
    assert out.datasets["toy"].span == pytest.approx(3 / 4)


def test_no_retrieval_has_no_recall_and_sends_no_docs():
    seen = []

    def spy(items):
        seen.extend(items)
        return answer(items)

    out = evaluate(QS, "no-retrieval", answer=spy, judge=None, search=None, show_progress=False)
    assert all(len(docs) == 0 for _, docs in seen)
    assert out.datasets["toy"].answer_recall_at_k is None
    assert out.average()["answer_recall@k"] is None


def test_unknown_method():
    with pytest.raises(InvalidArgument, match="unknown method 'magic'"):
        evaluate(QS, "magic", answer=answer, judge=None, search=search, show_progress=False)


def test_report_files_and_table(tmp_path):
    a = evaluate(QS, "no-retrieval", answer=answer, judge=None, search=None, show_progress=False)
    b = evaluate(QS, "naive-rag", answer=answer, judge=None, search=search, show_progress=False)
    ra = write_outcome(tmp_path / "a", a, {"k": 3})
    rb = write_outcome(tmp_path / "b", b, {"k": 3})
    data = json.loads((tmp_path / "b" / "results.json").read_text())
    assert set(data["datasets"]["toy"]) >= {"n", "genacc", "em", "f1", "span", "answer_recall@k"}
    for key in ("genacc", "em", "f1", "span"):
        assert 0.0 <= data["average"][key] <= 1.0
    preds = (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 4 and json.loads(preds[0])["doc_ids"] == ["d1"]
    table = markdown_table([ra, rb])
    assert "| Method | toy | Avg. |" in table
    assert "| naive-rag | 75.0 (25.0) | 75.0 (25.0) |" in table
    # nothing half-written is left next to the results
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]
