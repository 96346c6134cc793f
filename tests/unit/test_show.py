"""`s3 show`: a saved trajectory rendered with rich (captured, not a real terminal)."""

import io

import pytest
from rich.console import Console

from s3cli.show import show
from s3core.errors import InvalidArgument, NotFound
from s3core.eval.report import write_outcome
from s3core.eval.runner import evaluate
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question

Q1 = Question("q1", "Which planet is closest to the Sun?", ("Mercury",), "astro")
Q2 = Question("q2", "Which planet has rings?", ("Saturn",), "astro")
MERCURY = Doc("w1", "Mercury (planet)", "Mercury is the smallest planet and the closest to the Sun [1].")
VENUS = Doc("w2", "Venus", "Venus is the second planet from the Sun.")
SUN = Doc("w3", "Sun", "The Sun is a star.")
ORBIT = Doc("w4", "Orbit (physics)", "An orbit is a curved path.")


def traj(q):
    return Trajectory(
        question=q,
        turns=[
            Turn('<important_info>[]</important_info><search_complete>false</search_complete>'
                 '<query>{"query": "innermost planet [solar system]"}</query>',
                 query="innermost planet [solar system]", valid_action=True, observation="\n\n<information ...>"),
            Turn("I am not sure what to do", observation="\n\n<feedback>That turn had no action</feedback>\n\n"),
            Turn("<important_info>[2]</important_info><search_complete>true</search_complete>",
                 important_ids=[2], search_complete=True, valid_action=True),
        ],
        blocks=[
            InfoBlock(0, "", [VENUS, SUN], selected=[], has_selection=True),
            InfoBlock(1, "innermost planet [solar system]", [ORBIT, MERCURY], selected=[2], has_selection=True),
        ],
        policy_version=2,
    )


@pytest.fixture()
def saved(tmp_path):
    def answer(items):
        return ["Mercury" if "closest" in q else "Jupiter" for q, _ in items]

    out = evaluate({"astro": [Q1, Q2]}, "s3", answer=answer, judge=None, search=None,
                   rollout=lambda qs: [traj(q) for q in qs], show_progress=False)
    write_outcome(tmp_path / "s3", out, {"k": 3})
    return tmp_path / "s3" / "trajectories.jsonl"


def render(path, **kw):
    buf = io.StringIO()
    show(path, console=Console(file=buf, width=160, color_system=None), **kw)
    return buf.getvalue()


def test_show_renders_an_episode(saved):
    text = render(saved, qid="q1")
    assert "Mercury (planet)" in text  # the title with a ")" survives, whole
    assert "Orbit (physics)" in text
    assert "Which planet is closest to the Sun?" in text and "gold: Mercury" in text
    for needle in ("Turn 1", "Turn 2", "Turn 3", "innermost planet [solar system]", "invalid turn",
                   "select from block 1: [2]", "done: yes", "Block 0", "Block 1", "selected [2]", "✓1"):
        assert needle in text, needle
    # the literal [1] inside a document is text, not markup
    assert "closest to the Sun [1]." in text
    # context: only the selected Mercury doc (block 0 had an empty selection)
    assert "Doc 1 (Title: Mercury (planet))" in text and "Doc 2" not in text
    assert "prediction: Mercury" in text and "GenAcc ✓ yes" in text


def test_show_by_index_and_wrong_answer(saved):
    text = render(saved, index=1)
    assert "Which planet has rings?" in text and "prediction: Jupiter" in text and "GenAcc ✗ no" in text


def test_show_without_predictions(saved):
    (saved.parent / "predictions.jsonl").unlink()
    assert "correctness not shown" in render(saved)


def test_show_bad_input(saved, tmp_path):
    with pytest.raises(NotFound, match="no trajectory for question id 'nope'"):
        render(saved, qid="nope")
    with pytest.raises(InvalidArgument, match="out of range"):
        render(saved, index=5)
    with pytest.raises(NotFound):
        render(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(InvalidArgument, match="bad.jsonl:1"):
        render(bad)


def test_cli_show(saved, capsys):
    from s3cli.main import main

    assert main(["show", str(saved), "--id", "astro/q1"]) == 0
    assert "Mercury (planet)" in capsys.readouterr().out
    assert main(["show", str(saved), "--index", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
