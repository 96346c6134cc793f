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
        Question("4", "Yes or no?", ("",), "toy"),  # empty gold: matches nothing, must be counted
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
    # Hamlet (EM) and Jupiter (span) span-match; the empty gold matches nothing (it used to match anything)
    assert r.span == pytest.approx(2 / 4)
    assert r.genacc == pytest.approx(2 / 4)
    assert r.empty_golds == 1 and r.unmatchable == 1
    # only the span failures are sent to the judge
    assert [x[1] for x in judged] == ["Lyon", "I don't know"]
    assert r.judge_calls == 2
    # gold in retrieved docs: Hamlet, Jupiter, and the empty gold? no docs -> False
    assert r.answer_recall_at_k == pytest.approx(2 / 4)


def test_judge_can_rescue_a_span_miss():
    out = evaluate(QS, "naive-rag", answer=answer, judge=lambda items: [True] * len(items), search=search,
                   k=3, show_progress=False)
    assert out.datasets["toy"].genacc == 1.0
    assert out.datasets["toy"].span == pytest.approx(2 / 4)


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
    assert "| naive-rag | 50.0 (25.0) | 50.0 (25.0) |" in table
    # nothing half-written is left next to the results
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]


def _s3_traj(q):
    from s3core.search.trajectory import InfoBlock, Trajectory, Turn

    return Trajectory(
        question=q,
        turns=[Turn("<search_complete>true</search_complete>", search_complete=True, valid_action=True)],
        blocks=[InfoBlock(0, "", CORPUS[q.question][:1])],
        policy_version=3,
    )


def test_many_methods_table_png_and_trajectories(tmp_path):
    from s3core.eval.methods import TrajectoryCache
    from s3core.eval.report import read_trajectory_record, write_summary

    cache = TrajectoryCache()
    results = []
    for method in ("no-retrieval", "naive-rag", "s3", "s3-no-initial"):
        out = evaluate(QS, method, answer=answer, judge=None, search=search, rollout=lambda qs: [_s3_traj(q) for q in qs],
                       trajectory_cache=cache, show_progress=False)
        results.append(write_outcome(tmp_path / method, out, {"k": 3}))
    # a second dataset for one method only: its cells are blank for the others
    extra = evaluate({"other": QS["toy"][:2]}, "naive-rag", answer=answer, judge=None, search=search, show_progress=False)
    results[1]["datasets"].update({"other": extra.datasets["other"].to_json()})
    write_summary(tmp_path, results)

    table = (tmp_path / "results.md").read_text()
    assert "| Method | toy | other | Avg. |" in table
    for method in ("no-retrieval", "naive-rag", "s3", "s3-no-initial"):
        assert f"| {method} |" in table
    assert "| s3 | 50.0 (25.0) | – |" in table  # same docs as naive-rag's top-1 here
    assert "| s3-no-initial | 0.0 (0.0) | – |" in table  # no block 0: closed book; nothing matches
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically

    # trajectories only for the s3 methods; one line per question, round-trips to the dataclass
    assert not (tmp_path / "naive-rag" / "trajectories.jsonl").exists()
    lines = [json.loads(x) for x in (tmp_path / "s3-no-initial" / "trajectories.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["ablation"] == "no_initial" and lines[0]["method"] == "s3-no-initial"
    assert lines[0]["context_doc_ids"] == []
    t = read_trajectory_record(lines[0])
    assert t.question.id == "1" and t.blocks[0].docs[0].title == "Hamlet" and t.policy_version == 3 and t.done
    s3_lines = [json.loads(x) for x in (tmp_path / "s3" / "trajectories.jsonl").read_text().splitlines()]
    assert s3_lines[0]["context_doc_ids"] == ["d1"] and s3_lines[0]["ablation"] == "none"


def test_method_answer_is_scored_and_recall_kept():
    from s3core.eval.methods import MethodOutput, register_method

    @register_method("test-self-answer", needs_retriever=False, uses_docs=True)
    def self_answer(questions, ctx):
        return [MethodOutput(docs=CORPUS[q.question][:1], answer="Jupiter") for q in questions]

    asked = []
    out = evaluate(QS, "test-self-answer", answer=lambda items: asked.extend(items) or [], judge=None, search=None,
                   show_progress=False)
    assert asked == []
    r = out.datasets["toy"]
    assert r.em == pytest.approx(1 / 4) and r.answer_recall_at_k == pytest.approx(2 / 4)
    assert all(p.answered_by == "method" for p in out.predictions)
