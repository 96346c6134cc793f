"""Search-o1-style, CoT and Search-R1 context mode (issue 15 §3) with in-process fakes for search and
the baseline LLM (unit level); the real generator runs them in tests/integration/test_eval_baselines_real.py."""

from __future__ import annotations

from typing import Any

import pytest

from s3core.eval.baselines import SO1_QUERY_OPEN, parse_cot_answer, parse_search_o1
from s3core.eval.methods import MethodContext, get_method, get_spec
from s3core.eval.runner import evaluate
from s3core.types import Doc, Question

Q_FR = Question("fr", "What is the capital of France?", ("Paris",), "toy")
Q_MC = Question("mc", "Which organ collects urine?\nOptions:\nA: Bladder\nB: Kidney\n", ("A",), "med")


class FakeSearch:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, queries: Any, k: int) -> list[list[Doc]]:
        self.calls.append((list(queries), k))
        return [[Doc(f"{q}#{i}", f"T:{q}", f"text {i} about {q}") for i in range(k)] for q in queries]


class ScriptedLLM:
    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.convs: list[list[dict[str, str]]] = []
        self.stops: list[tuple[str, ...]] = []

    def __call__(self, conversations: Any, max_new_tokens: int, temperature: float = 0.0, stop: Any = ()) -> list[str]:
        self.convs.extend([list(c) for c in conversations])
        self.stops.append(tuple(stop))
        return [self.reply(list(c)) for c in conversations]


def spy_answer(seen: list[Any]) -> Any:
    def answer(items: Any) -> list[str]:
        seen.extend(items)
        return ["Paris" if "France" in q else "A" for q, _ in items]
    return answer


@pytest.mark.parametrize(
    ("text", "answer", "phrased"),
    [
        ("France's capital is Paris. So the answer is Paris.", "Paris", True),
        ("so the answer is: B\nextra", "B", True),
        ("It could be X. So the answer is Y. Hmm, so the answer is Z.", "Z", True),  # the last one
        ("I reason.\nParis", "Paris", False),
        ("", "", False),
    ],
)
def test_parse_cot_answer(text: str, answer: str, phrased: bool) -> None:
    assert parse_cot_answer(text) == (answer, phrased)


def test_cot_answers_itself_closed_book_and_mc_is_scored_by_choice() -> None:
    llm = ScriptedLLM(lambda c: "Urine is stored in the bladder. So the answer is A." if "Options" in c[1]["content"]
                      else "The capital of France is Paris. So the answer is Paris.")
    seen: list[Any] = []
    out = evaluate({"toy": [Q_FR], "med": [Q_MC]}, "cot", answer=spy_answer(seen), judge=None, search=None,
                   complete=llm, show_progress=False)
    assert seen == []  # the generator is not asked: the chain of thought answers
    fr, mc = out.predictions
    assert fr.prediction == "Paris" and fr.em and fr.answered_by == "method" and fr.doc_ids == []
    assert mc.prediction == "A" and mc.choice == "A" and mc.genacc
    assert "the option's letter" in llm.convs[1][1]["content"] and "the option's letter" not in llm.convs[0][1]["content"]
    assert out.datasets["toy"].answer_recall_at_k is None and not get_spec("cot").needs_retriever


def test_parse_search_o1() -> None:
    assert parse_search_o1(f"I should look. {SO1_QUERY_OPEN} capital of France") == ("search", "capital of France")
    assert parse_search_o1("<answer> Paris </answer> <|begin_search_query|> x") == ("answer", "Paris")
    assert parse_search_o1("no markers") == ("invalid", "")
    assert parse_search_o1(f"{SO1_QUERY_OPEN}   ") == ("invalid", "")


def test_search_o1_reasons_in_documents_and_hands_docs_to_the_generator() -> None:
    def reply(conv: list[dict[str, str]]) -> str:
        if conv[0]["content"].startswith("You read search results"):
            return "The capital of France is Paris."  # the reason-in-documents call
        if len(conv) > 2:
            return "Then the answer is clear. <answer> Paris"
        return f"I need the capital. {SO1_QUERY_OPEN} capital of France"

    search = FakeSearch()
    llm = ScriptedLLM(reply)
    seen: list[Any] = []
    out = evaluate({"toy": [Q_FR]}, "search-o1", answer=spy_answer(seen), judge=None, search=search, k=2,
                   complete=llm, show_progress=False)
    p = out.predictions[0]
    assert search.calls == [(["capital of France"], 2)]
    assert p.answered_by == "generator" and p.prediction == "Paris" and len(p.doc_ids) == 2
    assert [d.id for d in seen[0][1]] == ["capital of France#0", "capital of France#1"]  # the docs, not the notes
    assert p.extra["notes"] == ["The capital of France is Paris."] and p.extra["own_answer"] == "Paris"
    rid = next(c for c in llm.convs if c[0]["content"].startswith("You read search results"))
    assert "I need the capital." in rid[1]["content"] and "Doc 1 (Title: T:capital of France)" in rid[1]["content"]
    last = llm.convs[-1]
    assert "<|begin_search_result|> The capital of France is Paris. <|end_search_result|>" in last[-1]["content"]
    assert last[-2]["content"].endswith("<|end_search_query|>")  # the stop string restored


def test_search_o1_is_bounded_without_markers_and_out_of_searches() -> None:
    llm = ScriptedLLM(lambda c: "rambling " * 50)
    [o] = get_method("search-o1")([Q_FR], MethodContext(search=FakeSearch(), k=1, complete=llm,
                                                          options={"search_o1_max_searches": 2}))
    assert o.docs == [] and o.extra["own_answer"] == "" and len(llm.convs) <= 2 * 2 + 3
    search = FakeSearch()
    llm = ScriptedLLM(lambda c: "ok" if c[0]["content"].startswith("You read") else f"{SO1_QUERY_OPEN} again")
    [o] = get_method("search-o1")([Q_FR], MethodContext(search=search, k=1, complete=llm,
                                                          options={"search_o1_max_searches": 1}))
    assert [q for qs, _ in search.calls for q in qs] == ["again"] and len(o.docs) == 1
    assert any("No searches are left" in m["content"] for m in llm.convs[-1])


def test_search_r1_context_mode_gives_its_docs_to_the_generator() -> None:
    llm = ScriptedLLM(lambda c: "<answer> Lyon" if len(c) > 2 else "<search> capital of France")
    seen: list[Any] = []
    out = evaluate({"toy": [Q_FR]}, "search-r1-context", answer=spy_answer(seen), judge=None, search=FakeSearch(),
                   k=3, complete=llm, show_progress=False)
    p = out.predictions[0]
    assert p.answered_by == "generator" and p.prediction == "Paris" and p.genacc  # the generator's, not "Lyon"
    assert p.extra["own_answer"] == "Lyon" and len(seen[0][1]) == 3
    assert out.datasets["toy"].answer_recall_at_k is not None


def test_cot_and_search_o1_on_real_mirage_rows(shared_data) -> None:
    """Real MIRAGE questions (options in the text): the LLM is told to answer with the letter, and
    its "So the answer is (B)." / "<answer> B: text" replies are scored by the chosen option."""
    from s3core.data import load_questions

    qs = load_questions(shared_data / "mirage" / "medqa.dev.jsonl", limit=12)
    gold = {q.question: q.golden_answers[0] for q in qs}
    wrong = {q.question: next(k for k in q.metadata["options"] if k != q.golden_answers[0]) for q in qs}

    def question_of(conv: list[dict[str, str]]) -> str:
        return next(q for q in gold if q.strip() in conv[1]["content"])

    def cot_reply(conv: list[dict[str, str]]) -> str:
        q = question_of(conv)
        assert "the option's letter" in conv[1]["content"]
        return f"Reasoning about the case. So the answer is ({gold[q] if len(q) % 2 else wrong[q]})."

    out = evaluate({"medqa": qs}, "cot", answer=spy_answer([]), judge=None, search=None, complete=ScriptedLLM(cot_reply),
                   show_progress=False)
    want = [len(q.question) % 2 == 1 for q in qs]
    assert [p.genacc for p in out.predictions] == want and out.datasets["medqa"].mc == 12

    def o1_reply(conv: list[dict[str, str]]) -> str:
        if conv[0]["content"].startswith("You read"):
            return "Nothing decisive."
        q = question_of(conv)
        return f"<answer> {gold[q]}: {qs[0].metadata['options'].get(gold[q], '')}" if len(conv) > 2 \
            else f"{SO1_QUERY_OPEN} {q.split(chr(10))[0][:60]}"

    seen: list[Any] = []
    out = evaluate({"medqa": qs}, "search-o1", answer=lambda items: seen.extend(items) or ["A" for _ in items],
                   judge=None, search=FakeSearch(), k=2, complete=ScriptedLLM(o1_reply), show_progress=False)
    assert len(seen) == 12 and all(len(docs) == 2 for _, docs in seen)  # the generator answers from the docs
    assert [p.choice for p in out.predictions] == ["A"] * 12
    assert [p.genacc for p in out.predictions] == [q.golden_answers[0] == "A" for q in qs]
