"""Trajectory <-> searcher_pb2.Trajectory round trip (s3core.rpc.convert)."""

from __future__ import annotations

from s3.v1 import searcher_pb2
from s3core.rpc.convert import (
    trajectory_from_bytes,
    trajectory_from_json,
    trajectory_from_pb,
    trajectory_to_bytes,
    trajectory_to_json,
    trajectory_to_pb,
)
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question


def _sample() -> Trajectory:
    mercury = Doc(id="d1", title="Mercury (planet)", text="Mercury orbits the Sun.\nSecond line.", score=12.5)
    other = Doc(id="d2", title="Café \"quoted\"", text="Unicode ✓ and <tags>", score=-0.25)
    third = Doc(id="d3", title="", text="", score=0.0)
    return Trajectory(
        question=Question(id="q7", question="Which planet is closest to the Sun?",
                          golden_answers=("Mercury", "Mercury (planet)"), dataset="nq"),
        turns=[
            Turn(raw_text='<important_info>[1]</important_info><query>{"query": "Mercury orbit"}</query>',
                 query="Mercury orbit", important_ids=[1], search_complete=False, valid_action=True,
                 observation="\n\n<information block=\"1\">...</information>\n\n"),
            Turn(raw_text="garbage", query=None, important_ids=[], search_complete=False, valid_action=False,
                 observation="\n\n<feedback>...</feedback>\n\n"),
            Turn(raw_text="<important_info>[2, 1]</important_info><search_complete>true</search_complete>",
                 query=None, important_ids=[2, 1], search_complete=True, valid_action=True, observation=""),
        ],
        blocks=[
            InfoBlock(index=0, query="", docs=[mercury, other], selected=[1], has_selection=True),
            InfoBlock(index=1, query="Mercury orbit", docs=[other, third, mercury], selected=[2, 1], has_selection=True),
            InfoBlock(index=2, query="empty selection", docs=[third], selected=[], has_selection=True),
            InfoBlock(index=3, query="no selection", docs=[], selected=[], has_selection=False),
        ],
        token_ids=[5, 6, 7, 100, 101, 8, 9, 102, 10, 103, 104],
        action_mask=[0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1],
        prompt_length=3,
        context=[mercury, other, third],
        policy_version=42,
        group_index=3,
        prompt_profile="reference-layout@ref-layout-v1",
    )


def test_round_trip_is_lossless():
    t = _sample()
    p = trajectory_to_pb(t)
    assert isinstance(p, searcher_pb2.Trajectory)
    back = trajectory_from_pb(p)
    assert back == t


def test_round_trip_through_bytes():
    t = _sample()
    data = trajectory_to_pb(t).SerializeToString()
    p = searcher_pb2.Trajectory()
    p.ParseFromString(data)
    assert trajectory_from_pb(p) == t
    # and the pb form is stable: pb -> dataclass -> pb gives the same message
    assert trajectory_to_pb(trajectory_from_pb(p)) == p


def test_empty_trajectory_round_trip():
    t = Trajectory(question=Question(id="", question="", golden_answers=()))
    assert trajectory_from_pb(trajectory_to_pb(t)) == t


def test_pb_fields_are_all_covered():
    """A new field in the proto must be mapped here too."""
    t = _sample()
    p = trajectory_to_pb(t)
    for msg, names in (
        (p, {"question", "turns", "blocks", "token_ids", "action_mask", "prompt_length", "context",
             "policy_version", "group_index", "prompt_profile"}),
        (p.turns[0], {"raw_text", "query", "important_ids", "search_complete", "valid_action", "observation"}),
        (p.blocks[0], {"index", "query", "documents", "selected", "has_selection"}),
    ):
        assert {f.name for f in msg.DESCRIPTOR.fields} == names


def test_helpers():
    t = _sample()
    assert t.done
    assert t.n_searches == 3
    assert t.action_spans() == [(3, 5), (7, 8), (9, 11)]
    assert t.last_action_index() == 10
    assert t.blocks[1].selected_docs() == [t.blocks[1].docs[1], t.blocks[1].docs[0]]


def test_bytes_and_json_forms_round_trip():
    t = _sample()
    assert trajectory_from_bytes(trajectory_to_bytes(t)) == t
    obj = trajectory_to_json(t)
    assert obj["question"]["id"] == "q7" and int(obj["policy_version"]) == 42  # int64: a string in proto JSON
    assert trajectory_from_json(obj) == t


def test_domain_type_has_no_wire_methods():
    """The domain type knows nothing of protobuf (the conversion is s3core.rpc.convert's)."""
    assert not hasattr(Trajectory, "to_pb") and not hasattr(Trajectory, "from_pb")
