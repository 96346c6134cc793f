"""GBR reward modes (spec §5) and the missing-baseline policy: fail loudly or compute, never fall back."""

from __future__ import annotations

import fakeredis
import pytest

from s3core.cache.baseline import BaselineCache, BaselineRecord
from s3core.cache.keys import key_factory
from s3core.config import RewardConfig
from s3core.errors import InvalidArgument
from s3core.reward import MissingBaseline, RewardComputer, gbr_reward, needs_baseline
from s3core.types import Question


@pytest.mark.parametrize("ctx,rag,mode,want", [
    (1.0, 0.0, "gbr", 1.0),
    (0.0, 1.0, "gbr", -1.0),
    (1.0, 1.0, "gbr", 0.0),
    (0.0, 0.0, "gbr", 0.0),
    (1.0, 0.0, "gbr_plus_acc", 2.0),
    (1.0, 1.0, "gbr_plus_acc", 1.0),
    (0.0, 1.0, "gbr_plus_acc", -1.0),
    (0.5, 0.25, "gbr_plus_acc", 0.75),
    (1.0, 1.0, "acc", 1.0),
    (0.0, 1.0, "acc", 0.0),
    (1.0, None, "acc", 1.0),  # acc ignores the baseline
])
def test_modes(ctx: float, rag: float | None, mode: str, want: float) -> None:
    assert gbr_reward(ctx, rag, mode) == pytest.approx(want)


def test_bools_are_accuracies() -> None:
    assert gbr_reward(True, False) == 1.0


@pytest.mark.parametrize("mode", ["gbr", "gbr_plus_acc"])
def test_missing_baseline_raises(mode: str) -> None:
    with pytest.raises(MissingBaseline, match="needs the naive-RAG baseline"):
        gbr_reward(1.0, None, mode)


def test_bad_inputs() -> None:
    with pytest.raises(InvalidArgument, match="unknown reward mode"):
        gbr_reward(1.0, 0.0, "closed_book")
    with pytest.raises(InvalidArgument, match="context_acc"):
        gbr_reward(1.5, 0.0)
    with pytest.raises(InvalidArgument, match="baseline_acc"):
        gbr_reward(1.0, float("nan"))
    assert needs_baseline("gbr") and needs_baseline("gbr_plus_acc") and not needs_baseline("acc")


# --- RewardComputer ---------------------------------------------------------------------------------

def _q(i: int, text: str | None = None) -> Question:
    return Question(id=f"q{i}", question=text or f"Question number {i}?", golden_answers=("x",), dataset="nq")


def _rec(qid: str, correct: bool) -> BaselineRecord:
    return BaselineRecord(question_id=qid, answer="x" if correct else "y", genacc=correct, em=correct,
                          f1=1.0 if correct else 0.0, span=correct, judge=None if correct else False)


@pytest.fixture
def cache() -> BaselineCache:
    return BaselineCache(fakeredis.FakeRedis())


KEY_FN = key_factory("bm25-test", 3, "hf/m", "v1", "llm:hf/m")


def test_computer_uses_cached_baselines(cache: BaselineCache) -> None:
    qs = [_q(0), _q(1)]
    cache.put_many([(KEY_FN(qs[0]), _rec("q0", True)), (KEY_FN(qs[1]), _rec("q1", False))])
    gbr = RewardComputer(cache, KEY_FN, mode="gbr")
    assert gbr.rewards(qs, [1.0, 1.0]) == [0.0, 1.0]
    plus = RewardComputer.from_config(RewardConfig(mode="gbr_plus_acc"), cache, KEY_FN)
    assert plus.rewards(qs, [1.0, 0.0]) == [1.0, 0.0]
    acc = RewardComputer(None, None, mode="acc")  # acc needs no cache at all
    assert acc.rewards(qs, [1.0, 0.0]) == [1.0, 0.0]


def test_computer_fails_loudly_on_missing(cache: BaselineCache) -> None:
    qs = [_q(i) for i in range(8)]
    cache.put(KEY_FN(qs[0]), _rec("q0", False))
    rc = RewardComputer(cache, KEY_FN, mode="gbr", on_missing="fail")
    with pytest.raises(MissingBaseline) as ei:
        rc.rewards(qs, [1.0] * 8)
    assert ei.value.question_ids == [f"q{i}" for i in range(1, 8)]
    msg = str(ei.value)
    assert "7 naive-RAG baseline(s) missing" in msg and "'q1'" in msg and "and 2 more" in msg
    assert "s3 precompute" in msg


def test_computer_computes_and_stores_missing(cache: BaselineCache) -> None:
    calls: list[list[str]] = []

    def compute(questions):  # noqa: ANN001, ANN202
        calls.append([q.id for q in questions])
        return [_rec(q.id, q.id == "q1") for q in questions]

    # q2 is q1 with trivial differences: one computation serves both
    qs = [_q(0), _q(1, "Who is X?"), _q(2, "who is x")]
    cache.put(KEY_FN(qs[0]), _rec("q0", True))
    rc = RewardComputer.from_config(RewardConfig(mode="gbr", on_missing_baseline="compute"), cache, KEY_FN,
                                    compute=compute)
    assert rc.rewards(qs, [1.0, 1.0, 0.0]) == [0.0, 0.0, -1.0]
    assert calls == [["q1"]] and rc.computed == 1
    assert cache.get(KEY_FN(qs[1])) is not None  # stored for next time
    assert rc.rewards(qs, [1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]
    assert calls == [["q1"]]  # second batch: all hits


def test_computer_config_errors(cache: BaselineCache) -> None:
    with pytest.raises(InvalidArgument, match="compute callback"):
        RewardComputer(cache, KEY_FN, on_missing="compute")
    with pytest.raises(InvalidArgument, match="on_missing"):
        RewardComputer(cache, KEY_FN, on_missing="closed_book")
    with pytest.raises(InvalidArgument, match="needs a baseline cache"):
        RewardComputer(None, None, mode="gbr")
    with pytest.raises(InvalidArgument, match="2 questions but 1"):
        RewardComputer(cache, KEY_FN).rewards([_q(0), _q(1)], [1.0])
