"""proto <-> domain conversion, in one place."""

from __future__ import annotations

from typing import Iterable

from s3.v1 import common_pb2
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
