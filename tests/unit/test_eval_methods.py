"""Evaluation methods with in-process fakes for search, the baseline LLM and the searcher (unit level).

The real services run them in tests/integration/test_eval_s3.py.
"""

import pytest

from s3core.eval.baselines import first_sentence, parse_rewrite, parse_search_r1
from s3core.eval.methods import S3_VARIANTS, MethodContext, TrajectoryCache, get_method, get_spec
from s3core.eval.runner import evaluate
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question

Q_FR = Question("fr", "What is the capital of France?", ("Paris",), "toy")
Q_HAM = Question("ham", "Who wrote Hamlet?", ("William Shakespeare",), "toy")


class FakeSearch:
    """Docs derived from the query text; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, queries, k):
        self.calls.append((list(queries), k))
        return [[Doc(f"{q}#{i}", f"T:{q}", f"text {i} about {q}") for i in range(k)] for q in queries]

    @property
    def queries(self):
        return [q for qs, _ in self.calls for q in qs]


class ScriptedLLM:
    """``replies``: a function (conversation) -> text; records every conversation it got."""

    def __init__(self, reply):
        self.reply = reply
        self.convs = []
        self.calls = 0

    def __call__(self, conversations, max_new_tokens, temperature=0.0, stop=()):
        self.calls += 1
        self.convs.extend(conversations)
        return [self.reply(c) for c in conversations]


def spy_answer(seen):
    def answer(items):
        seen.extend(items)
        return ["Paris" if "France" in q else "Shakespeare" for q, _ in items]
    return answer


# --- DeepRetrieval-style ---------------------------------------------------------------------------

def test_deepretrieval_retrieves_with_the_rewritten_query():
    search = FakeSearch()
    llm = ScriptedLLM(lambda conv: "Query: capital city of France Paris\nThis query works because ...")
    seen = []
    out = evaluate({"toy": [Q_FR]}, "deepretrieval", answer=spy_answer(seen), judge=None, search=search, k=2,
                   complete=llm, show_progress=False)
    assert search.queries == ["capital city of France Paris"]  # not the raw question
    assert "What is the capital of France?" in llm.convs[0][-1]["content"]
    # the generator answers from the docs of the rewritten query
    assert [d.id for d in seen[0][1]] == ["capital city of France Paris#0", "capital city of France Paris#1"]
    p = out.predictions[0]
    assert p.extra["query"] == "capital city of France Paris" and not p.extra["fallback_to_question"]
    assert p.answered_by == "generator" and p.em


@pytest.mark.parametrize("reply,expected,fallback", [
    ("", "Q?", True),
    ("   \n\n", "Q?", True),
    ('<query>{"query": "tagged json"}</query>', "tagged json", False),
    ('{"query": "bare json"}', "bare json", False),
    ('\n"quoted query"\nmore', "quoted query", False),
    ("**Search query:** bold one", "bold one", False),
    ("word " * 200, ("word " * 200)[:256].rsplit(" ", 1)[0].strip(), False),
])
def test_parse_rewrite(reply, expected, fallback):
    q, fb = parse_rewrite(reply, "Q?")
    assert (q, fb) == (expected, fallback)
    assert len(q) <= 256


def test_deepretrieval_falls_back_to_the_question_on_an_empty_reply():
    search = FakeSearch()
    ctx = MethodContext(search=search, k=1, complete=ScriptedLLM(lambda c: ""))
    [o] = get_method("deepretrieval")([Q_FR], ctx)
    assert search.queries == [Q_FR.question] and o.extra["fallback_to_question"]


# --- IRCoT-style -----------------------------------------------------------------------------------

def test_ircot_stops_on_the_answer_phrase():
    def reply(conv):
        so_far = conv[-1]["content"].split("Reasoning so far:")[1]
        if "Shakespeare wrote it" in so_far:
            return "So the answer is William Shakespeare. Extra rambling that is ignored."
        return "Hamlet is a play; Shakespeare wrote it. Then more text\nand a second line"

    search = FakeSearch()
    llm = ScriptedLLM(reply)
    seen = []
    out = evaluate({"toy": [Q_HAM]}, "ircot", answer=spy_answer(seen), judge=None, search=search, k=2,
                   complete=llm, options={"ircot_steps": 5}, show_progress=False)
    # first retrieval with the question, then with the first CoT sentence; the answer sentence is not searched
    assert search.queries == ["Who wrote Hamlet?", "Hamlet is a play; Shakespeare wrote it."]
    assert llm.calls == 2
    extra = out.predictions[0].extra
    assert extra["stop"] == "answer" and extra["cot_answer"] == "William Shakespeare"
    assert extra["cot"] == ["Hamlet is a play; Shakespeare wrote it.", "So the answer is William Shakespeare."]
    # the docs so far are shown to the LLM at the second step
    assert "Who wrote Hamlet?#0" not in llm.convs[1][-1]["content"]  # ids are not shown, titles are
    assert "T:Hamlet is a play; Shakespeare wrote it." in llm.convs[1][-1]["content"]
    assert len(seen[0][1]) == 4 and out.predictions[0].answered_by == "generator"


def test_ircot_caps_steps_and_context():
    n = {"i": 0}

    def reply(conv):
        n["i"] += 1
        return f"Step number {n['i']} goes here."

    search = FakeSearch()
    llm = ScriptedLLM(reply)
    ctx = MethodContext(search=search, k=2, complete=llm, options={"ircot_steps": 2})
    [o] = get_method("ircot")([Q_HAM], ctx)
    assert llm.calls == 2  # never more than ircot_steps LLM calls
    assert len(search.queries) == 3  # the question + one per step
    assert len(o.docs) == 2 * 2  # capped at k * steps (6 were retrieved)
    assert [d.id for d in o.docs] == ["Who wrote Hamlet?#0", "Who wrote Hamlet?#1",
                                      "Step number 1 goes here.#0", "Step number 1 goes here.#1"]
    assert o.extra["stop"] == "max_steps"


def test_ircot_empty_reply_stops_without_searching():
    search = FakeSearch()
    ctx = MethodContext(search=search, k=1, complete=ScriptedLLM(lambda c: "\n"))
    [o] = get_method("ircot")([Q_HAM], ctx)
    assert search.queries == [Q_HAM.question] and o.extra["stop"] == "empty" and len(o.docs) == 1


def test_first_sentence():
    assert first_sentence("A b. C d.") == "A b."
    assert first_sentence("\n\n  Mercury (planet) is small.  It is hot.") == "Mercury (planet) is small."
    assert first_sentence("") == ""
    assert len(first_sentence("x" * 1000)) <= 300


# --- Search-R1-style -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("<think>need facts</think>\n<search> capital of France", ("search", "capital of France")),
    ("<search>capital of France</search>", ("search", "capital of France")),
    ("<answer> Paris </answer>", ("answer", "Paris")),
    ("<think>done</think><answer>Paris", ("answer", "Paris")),  # unclosed: cut by the stop string or tokens
    ("I think it is Paris.", ("invalid", "")),
    ("", ("invalid", "")),
    ("<search></search>", ("invalid", "")),
    # a model that does not stop invents results: everything after the first closing tag is ignored
    ("<search>a</search><information>fake</information><answer>b</answer>", ("search", "a")),
    ("<ANSWER>Upper</ANSWER>", ("answer", "Upper")),
])
def test_parse_search_r1(text, expected):
    assert parse_search_r1(text) == expected


def test_search_r1_answers_itself_and_is_scored_directly():
    def reply(conv):
        if len(conv) > 2:  # system, user, then our turns
            return "<think>found it</think><answer> Paris"
        return "<search> capital of France"

    search = FakeSearch()
    llm = ScriptedLLM(reply)
    seen = []
    out = evaluate({"toy": [Q_FR]}, "search-r1", answer=spy_answer(seen), judge=None, search=search, k=3,
                   complete=llm, show_progress=False)
    assert seen == []  # the generator was not asked
    p = out.predictions[0]
    assert p.prediction == "Paris" and p.em and p.answered_by == "method"
    assert search.queries == ["capital of France"] and p.extra["queries"] == ["capital of France"]
    assert len(p.doc_ids) == 3 and p.extra["answered"]
    # the second turn saw the first one (closing tag restored) and the documents
    conv = llm.convs[-1]
    assert conv[-2] == {"role": "assistant", "content": "<search> capital of France</search>"}
    assert "Doc 1 (Title: T:capital of France)" in conv[-1]["content"]


def test_search_r1_without_tags_ends_with_an_empty_answer():
    search = FakeSearch()
    llm = ScriptedLLM(lambda conv: "blah " * 400)  # endless text, never a tag
    ctx = MethodContext(search=search, k=2, complete=llm, options={"search_r1_max_searches": 2})
    [o] = get_method("search-r1")([Q_FR], ctx)
    assert o.answer == "" and not o.extra["answered"]
    assert search.calls == [] and o.docs == []
    assert llm.calls <= 2 * 2 + 3  # bounded, never loops forever
    assert any("<search>" in m["content"] for m in llm.convs[-1] if m["role"] == "user")  # feedback was given


def test_search_r1_runs_out_of_searches():
    search = FakeSearch()
    llm = ScriptedLLM(lambda conv: "<search> again")
    ctx = MethodContext(search=search, k=1, complete=llm, options={"search_r1_max_searches": 1})
    [o] = get_method("search-r1")([Q_FR], ctx)
    assert search.queries == ["again"]  # the second search was not run
    assert o.answer == "" and o.extra["turns"] == 2
    assert "No searches are left" in llm.convs[-1][-1]["content"]


def test_search_r1_batches_questions_with_different_lengths():
    def reply(conv):
        q = conv[1]["content"]
        if "Hamlet" in q:
            return "<answer>Shakespeare</answer>"
        return "<answer>Paris</answer>" if len(conv) > 2 else "<search>France capital</search>"

    search = FakeSearch()
    ctx = MethodContext(search=search, k=1, complete=ScriptedLLM(reply))
    outs = get_method("search-r1")([Q_FR, Q_HAM], ctx)
    assert [o.answer for o in outs] == ["Paris", "Shakespeare"]
    assert outs[1].docs == [] and len(outs[0].docs) == 1


# --- s3 and its ablations --------------------------------------------------------------------------

def D(i, title=None):
    return Doc(f"d{i}", title or f"Title {i}", f"text of doc {i}")


MERCURY = Doc("m", "Mercury (planet)", "Mercury is the smallest planet.")


def make_traj(q):
    a, b, c, d, e, f = (D(i) for i in "abcdef")
    return Trajectory(
        question=q,
        turns=[
            Turn('<important_info>[3]</important_info><query>{"query": "q1"}</query>', query="q1", important_ids=[3],
                 valid_action=True),
            Turn('<important_info>[2, 1]</important_info><query>{"query": "q2"}</query>', query="q2",
                 important_ids=[2, 1], valid_action=True),
            Turn("<search_complete>true</search_complete>", search_complete=True, valid_action=True),
        ],
        blocks=[
            InfoBlock(0, "", [a, b, c], selected=[3], has_selection=True),
            InfoBlock(1, "q1", [d, e, a], selected=[2, 1], has_selection=True),
            InfoBlock(2, "q2", [f, MERCURY]),  # a last block followed by "done": all its docs
        ],
        policy_version=7,
    )


EXPECTED = {
    "s3": ["dc", "de", "dd", "df", "m"],
    "s3-no-selection": ["da", "db", "dc", "dd", "de", "df", "m"],
    "s3-no-initial": ["de", "dd", "df", "m"],
    "s3-no-selection-no-initial": ["dd", "de", "da", "df", "m"],
}


def test_s3_ablations_share_the_same_trajectories():
    rolled = []

    def rollout(qs):
        rolled.append([q.id for q in qs])
        return [make_traj(q) for q in qs]

    cache = TrajectoryCache()
    qs = {"toy": [Q_FR, Q_HAM]}
    for method, want in EXPECTED.items():
        seen = []
        out = evaluate(qs, method, answer=spy_answer(seen), judge=None, search=None, k=3, rollout=rollout,
                       trajectory_cache=cache, show_progress=False)
        assert [p.doc_ids for p in out.predictions] == [want, want], method
        assert [[d.id for d in docs] for _, docs in seen] == [want, want]
        assert [t[1] for t in out.trajectories] == ["fr", "ham"]
        assert out.trajectories[0][3] == want  # the context ids saved with the trajectory
        assert out.predictions[0].extra["ablation"] == S3_VARIANTS[method]
        assert out.predictions[0].extra["policy_version"] == 7
        assert out.datasets["toy"].answer_recall_at_k is not None
    assert rolled == [["fr", "ham"]]  # one rollout for all four variants
    assert cache.rollout_calls == 1 and len(cache) == 2


def test_s3_mercury_title_survives_into_the_generator_docs():
    seen = []
    evaluate({"toy": [Q_FR]}, "s3", answer=spy_answer(seen), judge=None, search=None,
             rollout=lambda qs: [make_traj(q) for q in qs], show_progress=False)
    assert "Mercury (planet)" in [d.title for d in seen[0][1]]


def test_s3_needs_a_searcher():
    with pytest.raises(ValueError, match="needs a searcher"):
        evaluate({"toy": [Q_FR]}, "s3", answer=spy_answer([]), judge=None, search=None, show_progress=False)


def test_a_short_rollout_is_an_error():
    from s3core.errors import S3Error

    with pytest.raises(S3Error, match="1 trajectories for 2 questions"):
        evaluate({"toy": [Q_FR, Q_HAM]}, "s3", answer=spy_answer([]), judge=None, search=None,
                 rollout=lambda qs: [make_traj(qs[0])], show_progress=False)


def test_baselines_need_an_llm():
    with pytest.raises(ValueError, match="needs an LLM"):
        evaluate({"toy": [Q_FR]}, "ircot", answer=spy_answer([]), judge=None, search=FakeSearch(), show_progress=False)


def test_registry_flags():
    assert get_spec("s3").needs_searcher and not get_spec("s3").needs_retriever
    for name in ("deepretrieval", "ircot", "search-r1"):
        s = get_spec(name)
        assert s.needs_llm and s.needs_retriever
    assert not get_spec("no-retrieval").uses_docs and get_spec("naive-rag").uses_docs


def test_rollouts_are_batched_beyond_the_generator_batch():
    qs = [Question(str(i), f"question {i}?", ("x",), "toy") for i in range(5)]
    sizes = []

    def rollout(batch):
        sizes.append(len(batch))
        return [make_traj(q) for q in batch]

    cache = TrajectoryCache()
    for method in ("s3", "s3-no-selection"):
        out = evaluate({"toy": qs}, method, answer=lambda items: ["x"] * len(items), judge=None, search=None,
                       batch_size=2, rollout=rollout, trajectory_cache=cache, options={"rollout_batch_size": 4},
                       show_progress=False)
        assert [p.id for p in out.predictions] == [q.id for q in qs]
    assert sizes == [4, 1]  # 5 questions in two searcher requests, for both variants
