"""`s3 eval` resumes per batch (issue 17 item 4): every finished batch is in the progress file before
the next starts, an interrupted evaluation resumes with only the missing questions, the result equals
an uninterrupted run, a torn last line is dropped, another evaluation's progress is not reused, and
the s3 variants still to run reuse the episodes of the interrupted one (unit level, in-process fakes)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from s3core.eval.methods import TrajectoryCache
from s3core.eval.progress import ProgressLog
from s3core.eval.runner import evaluate
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question

QS = {
    "a": [Question(str(i), f"question {i}?", (f"answer {i}",), "a") for i in range(7)],
    "b": [Question(str(i), f"other {i}?", (f"gold {i}",), "b") for i in range(5)],
}


def search(queries: list[str], k: int) -> list[list[Doc]]:
    return [[Doc(f"d-{q}", "t", f"text about answer {q.split()[-1].rstrip('?')}", 1.0)][:k] for q in queries]


class Answer:
    """Answers right for even ids; raises after ``fail_after`` calls (a dying generator / a kill)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_after = fail_after

    def __call__(self, items: Any) -> list[str]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append([q for q, _ in items])
        return [f"answer {q.split()[-1].rstrip('?')}" if int(q.split()[-1].rstrip("?")) % 2 == 0 else "no idea"
                for q, _ in items]


def _rows(out: Any) -> list[dict[str, Any]]:
    return [asdict(p) for p in out.predictions]


def test_interrupted_evaluation_resumes_with_only_the_missing_batches(tmp_path: Path) -> None:
    whole = evaluate(QS, "naive-rag", answer=Answer(), judge=None, search=search, batch_size=2, show_progress=False)
    path = tmp_path / ".progress.jsonl"
    first = Answer(fail_after=3)  # dies in the 4th batch of dataset "a"
    with pytest.raises(KeyboardInterrupt):
        evaluate(QS, "naive-rag", answer=first, judge=None, search=search, batch_size=2, show_progress=False,
                 progress=ProgressLog(path, "fp"))
    log = ProgressLog(path, "fp")
    assert log.done_ids("a") == {"0", "1", "2", "3", "4", "5"} and not log.done_ids("b")
    second = Answer()
    out = evaluate(QS, "naive-rag", answer=second, judge=None, search=search, batch_size=2, show_progress=False,
                   progress=log)
    asked = [q for call in second.calls for q in call]
    assert asked == ["question 6?"] + [q.question for q in QS["b"]]  # nothing recomputed
    assert _rows(out) == _rows(whole)  # same rows, same order
    assert {d: r.to_json() for d, r in out.datasets.items()} == {d: r.to_json() for d, r in whole.datasets.items()}


def test_torn_tail_and_foreign_progress(tmp_path: Path) -> None:
    path = tmp_path / ".progress.jsonl"
    evaluate({"a": QS["a"][:4]}, "naive-rag", answer=Answer(), judge=None, search=search, batch_size=2,
             show_progress=False, progress=ProgressLog(path, "fp"))
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3  # header + 2 batches
    path.write_bytes(b"".join(lines[:2]) + lines[2][:40])  # killed while writing the 2nd batch
    log = ProgressLog(path, "fp")
    assert log.done_ids("a") == {"0", "1"}
    assert path.read_bytes() == b"".join(lines[:2])  # the torn line is gone; appends start clean
    other = ProgressLog(path, "another evaluation")
    assert len(other) == 0 and not path.exists()


def _traj(q: Question, version: int) -> Trajectory:
    return Trajectory(question=q, turns=[Turn("<search_complete>true</search_complete>", search_complete=True,
                                               valid_action=True)],
                      blocks=[InfoBlock(0, "", search([q.question], 1)[0])], policy_version=version)


def test_s3_episodes_survive_the_interruption(tmp_path: Path) -> None:
    calls: list[int] = []

    def rollout(qs: Any) -> list[Trajectory]:
        calls.append(len(qs))
        return [_traj(q, len(calls)) for q in qs]

    path = tmp_path / ".progress.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate({"a": QS["a"]}, "s3", answer=Answer(fail_after=2), judge=None, search=search, rollout=rollout,
                 batch_size=2, show_progress=False, progress=ProgressLog(path, "fp"),
                 options={"rollout_batch_size": 2})
    n_rollouts = len(calls)
    cache = TrajectoryCache()
    out = evaluate({"a": QS["a"]}, "s3", answer=Answer(), judge=None, search=search, rollout=rollout,
                   batch_size=2, show_progress=False, progress=ProgressLog(path, "fp"), trajectory_cache=cache,
                   options={"rollout_batch_size": 2})
    versions = {qid: t.policy_version for _, qid, t, _ in out.trajectories}
    assert [qid for _, qid, _, _ in out.trajectories] == [q.id for q in QS["a"]]
    assert versions["0"] == versions["1"] == 1  # the first run's episodes, read back
    assert len(calls) > n_rollouts and all(versions[q] > 1 for q in ("4", "5", "6"))
    rec = json.loads(path.read_text().splitlines()[1])
    assert rec["dataset"] == "a" and len(rec["trajectories"]) == 2
