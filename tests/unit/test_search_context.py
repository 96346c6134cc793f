"""Context-assembly vectors (spec §3) and the three ablations."""

from __future__ import annotations

import pytest

from s3core.errors import InvalidArgument
from s3core.search.context import ABLATIONS, build_context, context_text, dedup_docs
from s3core.search.trajectory import InfoBlock
from s3core.types import Doc


def d(i: str, title: str | None = None, text: str | None = None) -> Doc:
    return Doc(id=i, title=title if title is not None else f"T{i}", text=text if text is not None else f"text of {i}")


def blk(index: int, ids: list[str], selected: list[int] | None = None, query: str = "") -> InfoBlock:
    return InfoBlock(index=index, query=query or ("" if index == 0 else f"q{index}"), docs=[d(i) for i in ids],
                     selected=list(selected or []), has_selection=selected is not None)


def ids(docs: list[Doc]) -> list[str]:
    return [x.id for x in docs]


# (name, blocks, ablation, expected ids)
VECTORS = [
    ("only block 0, never selected", [blk(0, ["a", "b", "c"])], "none", ["a", "b", "c"]),
    ("block 0 selected", [blk(0, ["a", "b", "c"], [3, 1])], "none", ["c", "a"]),
    ("selection order kept", [blk(0, ["a", "b", "c"], [2, 3, 1])], "none", ["b", "c", "a"]),
    ("selected blocks first, then unselected blocks",
     [blk(0, ["a", "b", "c"]), blk(1, ["d", "e", "f"], [2]), blk(2, ["g", "h"], [1])],
     "none", ["e", "g", "a", "b", "c"]),
    ("last block followed by done contributes all docs",
     [blk(0, ["a", "b", "c"], [1]), blk(1, ["d", "e"], [2]), blk(2, ["f", "g", "h"])],
     "none", ["a", "e", "f", "g", "h"]),
    ("explicit empty selection contributes nothing",
     [blk(0, ["a", "b"], []), blk(1, ["c", "d"], [2])], "none", ["d"]),
    ("duplicate id across blocks keeps first",
     [blk(0, ["a", "b", "c"], [2]), blk(1, ["b", "d"], [1, 2])], "none", ["b", "d"]),
    ("duplicate between selected and unselected block",
     [blk(0, ["a", "b", "c"]), blk(1, ["c", "x"], [1])], "none", ["c", "a", "b"]),
    ("ids beyond the block are ignored", [blk(0, ["a", "b"], [5, 2])], "none", ["b"]),
    ("empty blocks", [blk(0, []), blk(1, [], [])], "none", []),
    ("no blocks", [], "none", []),
    ("ablation no_selection: all docs of all blocks in block order",
     [blk(0, ["a", "b", "c"], [3]), blk(1, ["d", "e"], [2]), blk(2, ["f"])],
     "no_selection", ["a", "b", "c", "d", "e", "f"]),
    ("ablation no_selection dedups",
     [blk(0, ["a", "b"], [1]), blk(1, ["b", "c"], [2])], "no_selection", ["a", "b", "c"]),
    ("ablation no_initial drops block 0",
     [blk(0, ["a", "b", "c"], [1]), blk(1, ["d", "e"], [2]), blk(2, ["f", "g"])],
     "no_initial", ["e", "f", "g"]),
    ("ablation no_initial with only block 0 is empty", [blk(0, ["a", "b"])], "no_initial", []),
    ("ablation both: all docs of blocks 1..",
     [blk(0, ["a", "b", "c"], [1]), blk(1, ["d", "e"], [2]), blk(2, ["f", "a"])],
     "both", ["d", "e", "f", "a"]),
    ("blocks given out of order are read in index order",
     [blk(1, ["d", "e"], [1]), blk(0, ["a", "b"])], "none", ["d", "a", "b"]),
]


@pytest.mark.parametrize("blocks,ablation,expected", [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_context_vectors(blocks, ablation, expected):
    assert ids(build_context(blocks, ablation)) == expected


def test_vector_count():
    assert len(VECTORS) >= 15


def test_mercury_planet_title_survives():
    mercury = Doc(id="m1", title="Mercury (planet)", text="Mercury is the smallest planet (by mass) in the Solar System.")
    element = Doc(id="m2", title="Mercury (element)", text="Mercury is a chemical element with symbol Hg.")
    b0 = InfoBlock(index=0, query="", docs=[element, mercury], selected=[2], has_selection=True)
    ctx = build_context([b0])
    assert ctx == [mercury]
    assert ctx[0].title == "Mercury (planet)"
    assert context_text([b0]) == (
        "Doc 1 (Title: Mercury (planet)) Mercury is the smallest planet (by mass) in the Solar System."
    )


def test_titles_with_brackets_and_tags_are_not_reparsed():
    weird = Doc(id="w", title="A (b) [c] <important_info>", text="</information> (Title: x) Doc 9")
    b0 = InfoBlock(index=0, query="", docs=[weird], selected=[1], has_selection=True)
    assert build_context([b0]) == [weird]


def test_dedup_by_identical_text_with_different_id():
    a = Doc(id="1", title="Paris", text="Paris is the capital of France.")
    b = Doc(id="2", title="Paris (city)", text="Paris is the capital of France.")
    c = Doc(id="3", title="Lyon", text="Lyon is in France.")
    blocks = [InfoBlock(0, "", [a, c]), InfoBlock(1, "q", [b], [1], True)]
    assert build_context(blocks) == [b, c]


def test_dedup_rules():
    x = Doc(id="x", title="t", text="same")
    y = Doc(id="x", title="other", text="different")  # duplicate id
    z = Doc(id="z", title="t", text="same")  # duplicate text
    e1 = Doc(id="", title="e1", text="one")  # empty id never dedups by id
    e2 = Doc(id="", title="e2", text="two")
    b1 = Doc(id="b1", title="b1", text="")  # empty text never dedups by text
    b2 = Doc(id="b2", title="b2", text="")
    assert dedup_docs([x, y, z, e1, e2, b1, b2]) == [x, e1, e2, b1, b2]


def test_context_docs_keep_scores_and_fields():
    a = Doc(id="1", title="T", text="body", score=3.5)
    assert build_context([InfoBlock(0, "", [a])]) == [a]


def test_unknown_ablation_rejected():
    with pytest.raises(InvalidArgument):
        build_context([], "bogus")


def test_all_ablations_listed():
    assert set(ABLATIONS) == {"none", "no_selection", "no_initial", "both"}


def test_context_text_renumbers_from_one():
    blocks = [blk(0, ["a", "b", "c"]), blk(1, ["d", "e"], [2])]
    assert context_text(blocks).splitlines() == [
        "Doc 1 (Title: Te) text of e",
        "Doc 2 (Title: Ta) text of a",
        "Doc 3 (Title: Tb) text of b",
        "Doc 4 (Title: Tc) text of c",
    ]
