"""Teacher trajectories for supervised warm starts (`s3 sft`).

Two sources, both giving :class:`~s3core.search.trajectory.Trajectory` objects:

**(a) A saved searcher run** -- ``trajectories.jsonl`` written by ``s3 eval --method s3`` (any
searcher, e.g. ``--searcher-model BIGGER``): :func:`load_trajectory_file`.  With
``only_correct=True`` only episodes whose context let the generator answer correctly are kept; that
verdict is read from the record itself when it carries one (``genacc`` / ``correct``), else from
the ``predictions.jsonl`` that ``s3 eval`` writes next to it (matched by dataset and id).

**(b) The synthetic world's own metadata** -- :func:`synth_teacher_trajectories` runs a scripted
teacher policy (:class:`SynthTeacher`) through the real episode engine
(:func:`s3core.search.episode.run_episodes`) against a real search function, so every block is a
genuine retrieval result and the token layout is exactly the engine's.  The teacher reads the
question's ``metadata`` (``hops``, ``gold_passage_ids``, ``subject``, ``bridge``,
``decomposition``) and, per turn:

* selects the positions of the gold passages present in the most recent block, in gold order (at
  most ``select_max``); when none is present it writes ``<important_info>[]</important_info>``, as
  the instructions say to (that block then adds nothing to the context -- it held nothing useful);
* ends the search (``<search_complete>true</search_complete>``) once every gold passage has been
  selected, on the final turn, or when it has no new query left;
* otherwise writes ``<search_complete>false</search_complete>`` and a query for the first gold
  passage still missing.  2-hop: the first hop's question (``decomposition[0]``) while the
  subject's passage is missing, then the second hop's (``decomposition[1]``, which names the
  bridge entity) -- so the teacher never uses the bridge's name before a passage it was shown
  named it; fall-backs when a query was already issued: the raw question (now with ``retrieve_k``
  docs), the subject's / the bridge's name.  1-hop: the raw question, then the subject's name.

The engine only hands a policy token ids, so the teacher needs to know which documents each block
holds: :class:`RecordingSearch` wraps the search function and records the docs returned per
``(query, k)``; the teacher identifies an episode by its exact prompt (rebuilt from the recorded
block 0, as the engine builds it) and its turn by the observations after the prompt, then replays
its own deterministic plan over the recorded results.  Nothing here is a reward or an oracle at RL
time: the teacher only makes supervised examples.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from s3core.config import SearchConfig
from s3core.errors import DataError, InvalidArgument, S3Error
from s3core.search.episode import SearchFn, decode, run_episodes
from s3core.search.prompts import (
    FEEDBACK_OPEN,
    INFO_OPEN,
    encode,
    prompt_token_ids,
    render_block,
    searcher_messages,
)
from s3core.search.trajectory import Trajectory
from s3core.types import Doc, Question

__all__ = [
    "RecordingSearch",
    "SynthTeacher",
    "teacher_action",
    "synth_teacher_trajectories",
    "load_trajectory_file",
    "PREDICTIONS_FILE",
]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"  # what `s3 eval` writes next to trajectories.jsonl


# --- (b) the synthetic-world teacher ------------------------------------------------------------


class RecordingSearch:
    """A :data:`~s3core.search.episode.SearchFn` that remembers what it returned, per ``(query, k)``."""

    def __init__(self, search: SearchFn) -> None:
        self.search = search
        self.results: dict[tuple[str, int], list[Doc]] = {}

    def __call__(self, queries: list[str], k: int) -> list[list[Doc]]:
        out = self.search(queries, k)
        for q, docs in zip(queries, out):
            self.results[(q, int(k))] = list(docs)[:k]
        return out

    def docs(self, query: str, k: int) -> list[Doc]:
        try:
            return self.results[(query, int(k))]
        except KeyError:
            raise S3Error(f"the teacher asked for the results of {query!r} (k={k}), which were never searched: "
                          "run the teacher through its RecordingSearch") from None


def _meta(q: Question) -> dict[str, Any]:
    m = q.metadata or {}
    golds = m.get("gold_passage_ids")
    if not isinstance(golds, list) or not golds or not all(isinstance(g, str) for g in golds):
        raise InvalidArgument(f"question {q.id!r} has no metadata.gold_passage_ids: the synthetic-world teacher needs "
                              "the rows of `s3 data synth` (synth_1hop.jsonl / synth_2hop.jsonl)")
    hops = m.get("hops", len(golds))
    if hops == 2:
        dec = m.get("decomposition")
        if (not isinstance(dec, list) or len(dec) != 2
                or not all(isinstance(d, dict) and isinstance(d.get("question"), str) for d in dec)
                or len(golds) != 2):
            raise InvalidArgument(f"question {q.id!r} is 2-hop but lacks metadata.decomposition (two "
                                  "{question, answer}) or two gold_passage_ids")
    elif hops != 1:
        raise InvalidArgument(f"question {q.id!r}: metadata.hops must be 1 or 2, got {hops!r}")
    return m


def _candidates(q: Question, m: dict[str, Any], missing: str) -> list[str]:
    """Queries for the gold passage ``missing``, best first."""
    golds = m["gold_passage_ids"]
    subject = str(m.get("subject") or "")
    if m.get("hops", len(golds)) == 2:
        dec = m["decomposition"]
        if missing == golds[0]:
            out = [dec[0]["question"], q.question, subject]
        else:
            out = [dec[1]["question"], str(m.get("bridge") or "")]
    else:
        out = [q.question, subject]
    return [c for c in (" ".join(str(s).split()) for s in out) if c]


def teacher_action(selected: Sequence[int], *, done: bool, query: str | None = None) -> str:
    """One well-formed turn: selection, completion flag and (when not done) the query."""
    text = f"<important_info>[{', '.join(str(i) for i in selected)}]</important_info>"
    text += f"<search_complete>{'true' if done else 'false'}</search_complete>"
    if not done:
        if not query:
            raise InvalidArgument("a turn that does not end the search needs a query")
        text += f"<query>{json.dumps({'query': query}, ensure_ascii=False)}</query>"
    return text


def _plan(q: Question, lookup: Callable[[str, int], list[Doc]], cfg: SearchConfig, upto: int) -> list[str]:
    """The teacher's texts for turns ``0..upto`` (fewer when it finishes earlier).

    Turn ``t`` depends on the results of the queries of turns ``< t`` only, so the engine has
    searched everything it reads by the time the teacher is asked for turn ``t``.
    """
    m = _meta(q)
    golds: list[str] = list(m["gold_passage_ids"])
    latest = lookup(q.question, cfg.initial_k)
    found: set[str] = set()
    issued: set[str] = set()
    texts: list[str] = []
    for t in range(min(upto, cfg.max_turns) + 1):
        pos = {d.id: i for i, d in reversed(list(enumerate(latest, start=1)))}
        chosen = [g for g in golds if g in pos and g not in found][: cfg.select_max]
        found.update(chosen)
        selected = [pos[g] for g in chosen]
        missing = [g for g in golds if g not in found]
        query = None
        if missing and t < cfg.max_turns:
            query = next((c for c in _candidates(q, m, missing[0]) if c not in issued), None)
        if query is None:
            texts.append(teacher_action(selected, done=True))
            break
        texts.append(teacher_action(selected, done=False, query=query))
        issued.add(query)
        if t < upto:
            latest = lookup(query, cfg.retrieve_k)
    return texts


class SynthTeacher:
    """A scripted :class:`~s3core.search.episode.Policy` for synthetic-world questions (module docstring).

    ``questions`` are the ones the episodes run on; ``search`` is the :class:`RecordingSearch` the
    same :func:`~s3core.search.episode.run_episodes` call searches with.  Deterministic: every
    episode of a question gets the same turns (temperature and seed are ignored).
    """

    version = 0

    def __init__(self, tokenizer: Any, questions: Sequence[Question], search: RecordingSearch,
                 cfg: SearchConfig) -> None:
        self.tokenizer = tokenizer
        self.search = search
        self.cfg = cfg
        self._pending = list(questions)  # questions whose prompt is not indexed yet (block 0 not searched)
        for q in self._pending:
            _meta(q)
        self._prompts: dict[tuple[int, ...], Question] = {}
        self._lengths: set[int] = set()

    def _index_prompts(self) -> None:
        waiting = []
        for q in self._pending:
            if (q.question, self.cfg.initial_k) not in self.search.results:
                waiting.append(q)
                continue
            docs0 = self.search.docs(q.question, self.cfg.initial_k)
            text0 = render_block(0, "", docs0, self.tokenizer, self.cfg.max_obs_tokens)
            msgs = searcher_messages(q.question, text0, select_max=self.cfg.select_max, max_turns=self.cfg.max_turns)
            ids = tuple(prompt_token_ids(self.tokenizer, msgs))
            self._prompts.setdefault(ids, q)
            self._lengths.add(len(ids))
        self._pending = waiting

    def _episode(self, ids: Sequence[int]) -> tuple[Question, int]:
        for attempt in range(2):
            for n in sorted(self._lengths, reverse=True):
                q = self._prompts.get(tuple(ids[:n]))
                if q is not None:
                    return q, n
            if attempt == 0:
                self._index_prompts()
        raise S3Error("the teacher was given a prompt of none of its questions")

    def generate(self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float,
                 stop: list[str]) -> list[list[int]]:
        outs: list[list[int]] = []
        for ids in batch_token_ids:
            q, n = self._episode(ids)
            rest = decode(self.tokenizer, ids[n:], skip_special=False)
            turn = rest.count(f'{INFO_OPEN} block="') + rest.count(FEEDBACK_OPEN)
            texts = _plan(q, self.search.docs, self.cfg, turn)
            if turn >= len(texts):
                raise S3Error(f"the teacher was asked for turn {turn + 1} of question {q.id!r} after it finished")
            outs.append(encode(self.tokenizer, texts[turn])[:max_new_tokens])
        return outs


def synth_teacher_trajectories(questions: Sequence[Question], search: SearchFn, tokenizer: Any, cfg: SearchConfig,
                               *, on_finish: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
    """One teacher episode per question (see the module docstring), laid out with ``tokenizer``.

    ``search`` is a real retrieval function (``(queries, k) -> docs``, e.g. a loaded index's
    ``search``); questions must carry the synthetic world's metadata.
    """
    if not questions:
        raise InvalidArgument("the synthetic-world teacher needs at least one question")
    rec = RecordingSearch(search)
    teacher = SynthTeacher(tokenizer, questions, rec, cfg)
    return run_episodes(list(questions), teacher, rec, cfg, temperature=0.0, on_finish=on_finish)


# --- (a) trajectories.jsonl of `s3 eval --method s3` ---------------------------------------------


def _correct_from_record(rec: dict[str, Any]) -> bool | None:
    for key in ("genacc", "correct"):
        if isinstance(rec.get(key), bool):
            return bool(rec[key])
    return None


def _predictions(path: Path) -> dict[tuple[str, str], bool]:
    out: dict[tuple[str, str], bool] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), lineno, f"invalid JSON: {exc.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("genacc"), bool):
                raise DataError(str(path), lineno, "expected a prediction object with a boolean 'genacc'")
            out[(str(row.get("dataset", "")), str(row.get("id", "")))] = bool(row["genacc"])
    return out


def load_trajectory_file(path: str | Path, *, only_correct: bool = False,
                         predictions: str | Path | None = None) -> list[Trajectory]:
    """The trajectories of a ``trajectories.jsonl`` (:mod:`s3core.eval.report` format), in file order.

    ``only_correct``: keep only those whose context let the generator answer correctly -- from each
    record's ``genacc`` / ``correct`` when present, else ``predictions`` (default: the
    ``predictions.jsonl`` next to the file).  Raises :class:`~s3core.errors.DataError` with
    ``file:line`` for a malformed line, :class:`~s3core.errors.InvalidArgument` when correctness is
    asked for but not available.
    """
    from s3core.eval.report import read_trajectory_record

    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"{p}: no such trajectories file")
    records: list[tuple[int, dict[str, Any], Trajectory]] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(p), lineno, f"invalid JSON: {exc.msg}") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("trajectory"), dict):
                raise DataError(str(p), lineno, "expected an object with a 'trajectory' (a trajectories.jsonl of "
                                "`s3 eval --method s3`)")
            try:
                traj = read_trajectory_record(rec)
            except Exception as exc:  # noqa: BLE001 - protobuf's ParseError and friends
                raise DataError(str(p), lineno, f"bad trajectory: {exc}") from None
            if not traj.turns or not traj.blocks:
                raise DataError(str(p), lineno, "the trajectory has no turn or no block 0")
            records.append((lineno, rec, traj))
    if not records:
        raise InvalidArgument(f"{p}: no trajectories in the file")
    if not only_correct:
        return [t for _, _, t in records]
    preds: dict[tuple[str, str], bool] | None = None
    kept: list[Trajectory] = []
    for lineno, rec, traj in records:
        ok = _correct_from_record(rec)
        if ok is None:
            if preds is None:
                pp = Path(predictions) if predictions else p.parent / PREDICTIONS_FILE
                if not pp.is_file():
                    raise InvalidArgument(f"{p}:{lineno}: keeping only correct trajectories needs each one's verdict, "
                                          f"but the record has none and there is no {pp}")
                preds = _predictions(pp)
            key = (str(rec.get("dataset", traj.question.dataset)), str(rec.get("id", traj.question.id)))
            if key not in preds:
                raise InvalidArgument(f"{p}:{lineno}: no prediction for dataset {key[0]!r} id {key[1]!r} in the "
                                      "predictions file")
            ok = preds[key]
        if ok:
            kept.append(traj)
    logger.info("%s: kept %d of %d trajectories whose context was answered correctly", p, len(kept), len(records))
    return kept


def load_trajectory_files(paths: Iterable[str | Path], *, only_correct: bool = False) -> list[Trajectory]:
    """:func:`load_trajectory_file` over several files, concatenated."""
    out: list[Trajectory] = []
    for path in paths:
        out.extend(load_trajectory_file(path, only_correct=only_correct))
    return out
