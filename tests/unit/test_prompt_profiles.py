"""Searcher prompt profiles (issue 15 §4): ours as default, and the layout of the reference's
released checkpoints; with a real (tiny, locally trained) tokenizer for the observation cut."""

from __future__ import annotations

import pytest

from s3core.errors import InvalidArgument
from s3core.rl.tiny import train_tiny_tokenizer
from s3core.search import prompts
from s3core.search.profiles import DEFAULT_PROFILE, check_profile_match, get_profile
from s3core.types import Doc

DOCS = [Doc("7", "Paris", "Paris is the capital of France."), Doc("9", "Lyon (city)", "Lyon is a city.\nIn France.")]


@pytest.fixture(scope="module")
def tok():
    return train_tiny_tokenizer()


def test_default_profile_is_ours(tok) -> None:
    p = get_profile("")
    assert p.name == DEFAULT_PROFILE and p.version == prompts.SEARCHER_PROMPT_VERSION and p.tag.startswith("s3-platform@")
    assert p.render_block(1, "q", DOCS, tok, 500) == prompts.render_block(1, "q", DOCS, tok, 500)
    assert p.searcher_messages("Q?", "B0", select_max=3, max_turns=2)[0]["role"] == "system"


def test_reference_layout(tok) -> None:
    p = get_profile("reference-layout")
    block0 = p.render_block(0, "", DOCS, tok, 500)
    assert block0 == ('<information>\nDoc 1(Title: "Paris") Paris is the capital of France.\n'
                      'Doc 2(Title: "Lyon (city)") Lyon is a city.\nIn France.\n</information>')
    msgs = p.searcher_messages("Who?\nOptions:\nA: x\nB: y", block0, select_max=5, max_turns=3)
    assert [m["role"] for m in msgs] == ["user"]  # no system message
    assert "<question>\nWho?\nOptions:\nA: x\nB: y\n</question>\n<information>\nDoc 1(Title:" in msgs[0]["content"]
    assert "up to 3" in msgs[0]["content"] and p.select_max == 3 and p.lenient_ids
    later = p.render_block(2, "capital", DOCS[:1], tok, 500)
    assert later == '<information>Doc 1(Title: "Paris") Paris is the capital of France.</information>'
    assert "query=" not in later and "block=" not in later
    assert p.block_observation(later, final_next=True) == f"\n\n{later}\n\n"  # no final-turn note
    fb = p.feedback_observation(final_next=False)
    assert fb.endswith("<query>\n") and "<feedback>" not in fb
    assert {"true", "yes", "1", "y"} == set(p.complete_values)
    # the observation budget still applies
    long_docs = [Doc(str(i), f"T{i}", "word " * 200) for i in range(5)]
    short = p.render_block(1, "q", long_docs, tok, 40)
    assert len(prompts.encode(tok, short)) < 60


def test_unknown_profile_and_mismatch() -> None:
    with pytest.raises(InvalidArgument, match="known: reference-layout, s3-platform"):
        get_profile("nope")
    ours = get_profile(DEFAULT_PROFILE)
    assert check_profile_match(ours, "") == "" and check_profile_match(ours, ours.tag) == ""
    msg = check_profile_match(ours, "reference-layout@ref-layout-v1")
    assert "reference-layout@ref-layout-v1" in msg and ours.tag in msg
    with pytest.raises(InvalidArgument):
        check_profile_match(ours, "reference-layout@ref-layout-v1", strict=True)
