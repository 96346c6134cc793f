"""proto <-> domain conversion, in one place.

Domain types (:mod:`s3core.types`, :mod:`s3core.search.trajectory`) know nothing of the wire; every
``*_pb2`` message is built and read here (and in the clients and servicers that call these).
``trajectory_to_pb`` / ``trajectory_from_pb`` round-trip every field ``searcher_pb2.Trajectory`` has; two
things the proto cannot carry: ``Question.metadata``, and full float64 precision of ``Doc.score`` (a
float32 on the wire).  ``trajectory_to_json`` / ``trajectory_from_json`` are the same message as a JSON
object (the ``"trajectory"`` of a ``trajectories.jsonl`` record).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

from s3.v1 import common_pb2, searcher_pb2
from s3core.config import SearchConfig
from s3core.errors import InvalidArgument
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question


def doc_to_pb(d: Doc) -> common_pb2.Document:
    return common_pb2.Document(id=d.id, title=d.title, text=d.text, score=float(d.score))


def doc_from_pb(p: common_pb2.Document) -> Doc:
    return Doc(id=p.id, title=p.title, text=p.text, score=float(p.score))


def docs_from_pb(ps: Iterable[common_pb2.Document]) -> list[Doc]:
    return [doc_from_pb(p) for p in ps]


def question_to_pb(q: Question) -> common_pb2.Question:
    return common_pb2.Question(id=q.id, question=q.question, golden_answers=list(q.golden_answers), dataset=q.dataset)


def question_from_pb(p: common_pb2.Question) -> Question:
    return Question(id=p.id, question=p.question, golden_answers=tuple(p.golden_answers), dataset=p.dataset)


# --- trajectories (s3.v1.Trajectory) ---------------------------------------------------------------

def info_block_to_pb(b: InfoBlock) -> searcher_pb2.InfoBlock:
    return searcher_pb2.InfoBlock(index=b.index, query=b.query, documents=[doc_to_pb(d) for d in b.docs],
                                  selected=list(b.selected), has_selection=b.has_selection)


def info_block_from_pb(p: searcher_pb2.InfoBlock) -> InfoBlock:
    return InfoBlock(index=p.index, query=p.query, docs=docs_from_pb(p.documents), selected=list(p.selected),
                     has_selection=p.has_selection)


def turn_to_pb(t: Turn) -> searcher_pb2.Turn:
    return searcher_pb2.Turn(raw_text=t.raw_text, query=t.query or "", important_ids=list(t.important_ids),
                             search_complete=t.search_complete, valid_action=t.valid_action, observation=t.observation)


def turn_from_pb(p: searcher_pb2.Turn) -> Turn:
    return Turn(raw_text=p.raw_text, query=p.query or None,  # the parser never yields an empty query
                important_ids=list(p.important_ids), search_complete=p.search_complete,
                valid_action=p.valid_action, observation=p.observation)


def trajectory_to_pb(t: Trajectory) -> searcher_pb2.Trajectory:
    return searcher_pb2.Trajectory(
        question=question_to_pb(t.question),
        turns=[turn_to_pb(x) for x in t.turns],
        blocks=[info_block_to_pb(b) for b in t.blocks],
        token_ids=list(t.token_ids),
        action_mask=list(t.action_mask),
        prompt_length=t.prompt_length,
        context=[doc_to_pb(d) for d in t.context],
        policy_version=t.policy_version,
        group_index=t.group_index,
        prompt_profile=t.prompt_profile,
    )


def trajectory_from_pb(p: searcher_pb2.Trajectory) -> Trajectory:
    return Trajectory(
        question=question_from_pb(p.question),
        turns=[turn_from_pb(x) for x in p.turns],
        blocks=[info_block_from_pb(b) for b in p.blocks],
        token_ids=list(p.token_ids),
        action_mask=list(p.action_mask),
        prompt_length=p.prompt_length,
        context=docs_from_pb(p.context),
        policy_version=p.policy_version,
        group_index=p.group_index,
        prompt_profile=p.prompt_profile,
    )


def trajectory_to_json(t: Trajectory) -> dict[str, Any]:
    """The trajectory as the JSON object of its proto (field names as in the proto)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(trajectory_to_pb(t), preserving_proto_field_name=True)


def trajectory_from_json(obj: Mapping[str, Any]) -> Trajectory:
    from google.protobuf.json_format import ParseDict

    return trajectory_from_pb(ParseDict(obj, searcher_pb2.Trajectory()))


def trajectory_to_bytes(t: Trajectory) -> bytes:
    return trajectory_to_pb(t).SerializeToString()


def trajectory_from_bytes(data: bytes) -> Trajectory:
    return trajectory_from_pb(searcher_pb2.Trajectory.FromString(data))


# --- searcher knobs (s3.v1.SearchKnobs) <-> SearchConfig -------------------------------------------

# SearchKnobs fields that map 1:1 onto SearchConfig fields; 0 on the wire = the server's default.
KNOB_FIELDS = ("initial_k", "retrieve_k", "select_max", "max_turns", "max_new_tokens", "max_obs_tokens")


def search_knobs_to_pb(
    cfg: SearchConfig | Mapping[str, Any] | None = None,
    *,
    temperature: float | None = None,
    n: int = 1,
    seed: int = 0,
) -> searcher_pb2.SearchKnobs:
    """Build ``SearchKnobs`` from a :class:`SearchConfig` (every knob sent) or a dict of some knobs
    (``initial_k``, ..., ``temperature``; the rest left 0 = server default).

    Values are checked here so a caller learns of a bad knob before any RPC: on the wire 0 means
    "server default", so a knob that is set must be >= 1 (``max_turns`` too: zero-turn episodes
    cannot be requested over RPC).
    """
    values: dict[str, int] = {}
    temp = temperature
    if isinstance(cfg, SearchConfig):
        values = {name: int(getattr(cfg, name)) for name in KNOB_FIELDS}
    elif cfg is not None:
        known = set(KNOB_FIELDS) | {"temperature"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise InvalidArgument(f"unknown search knob {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for name in KNOB_FIELDS:
            if name in cfg and cfg[name] is not None:
                v = cfg[name]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise InvalidArgument(f"knob {name} must be an integer, got {v!r}")
                values[name] = v
        if cfg.get("temperature") is not None:
            if temp is not None:
                raise InvalidArgument("temperature given both as a knob and as an argument")
            temp = cfg["temperature"]
    for name, v in values.items():
        if v < 1:
            raise InvalidArgument(f"knob {name} must be >= 1, got {v} (leave it out for the server default)")
    if temp is not None:
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not 0.0 <= float(temp) <= 5.0:
            raise InvalidArgument(f"temperature must be a number in [0, 5], got {temp!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgument(f"n (trajectories per question) must be >= 1, got {n!r}")
    return searcher_pb2.SearchKnobs(temperature=float(temp or 0.0), n=n, seed=int(seed), **values)


def search_knobs_from_pb(
    knobs: searcher_pb2.SearchKnobs, defaults: SearchConfig, *, train: bool = False
) -> tuple[SearchConfig, float, int, int]:
    """``(SearchConfig, temperature, n, seed)`` of a request: each knob that is 0 takes the value of
    ``defaults`` (temperature: ``defaults.temperature_train`` when ``train`` else ``temperature_eval``).

    Negative knobs raise :class:`InvalidArgument`; range caps are the caller's (the service's).
    """
    values: dict[str, int] = {}
    for name in KNOB_FIELDS:
        v = int(getattr(knobs, name))
        if v < 0:
            raise InvalidArgument(f"knobs.{name} must be >= 0 (0 = server default), got {v}")
        values[name] = v or int(getattr(defaults, name))
    temp = float(knobs.temperature)
    if math.isnan(temp) or temp < 0:
        raise InvalidArgument(f"knobs.temperature must be >= 0 (0 = server default), got {knobs.temperature}")
    if temp == 0:
        temp = defaults.temperature_train if train else defaults.temperature_eval
    if knobs.n < 0:
        raise InvalidArgument(f"knobs.n must be >= 0 (0 or 1 = one trajectory per question), got {knobs.n}")
    cfg = dataclasses.replace(defaults, **values)
    return cfg, temp, max(1, int(knobs.n)), int(knobs.seed)
