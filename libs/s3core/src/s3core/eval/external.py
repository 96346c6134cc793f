"""`s3 score`: score what another system produced with exactly the metrics of `s3 eval`.

Two inputs, one of them per run:

* **predictions** -- ``{"id", "prediction", "dataset"?}`` rows: answers made by any system, scored
  as they are (the generator is not asked; with ``--judge model|only`` it judges).
* **contexts** -- ``{"id", "documents": [...], "dataset"?}`` rows: documents gathered by any
  searcher (the reference's s3, Search-R1, ...); the generator answers from them and the answers
  are scored, so searchers are compared on equal terms.  A document is a string (the passage), a
  ``{"contents"}`` (wiki-18: title on the first line), ``{"title", "text"}`` or ``{"text"}`` object,
  or a Search-R1 ``/retrieve`` hit ``{"document": {...}, "score": ...}``.

Rows are matched to the questions by ``dataset`` and ``id``; ``dataset`` may be left out when the
id is in one question file only.

The reference implementation's context files are read too (``--contexts`` of a ``.json`` file
holding one object ``{question text: {"golden_answers": [...], "context_with_info": "Doc 1
(Title: ...) ..."}}``, what its context-gathering scripts write for the evaluation step): entries
are matched to the questions by their text (whitespace-collapsed), and ``context_with_info`` is
split back into documents at its ``Doc n (Title: ...)`` headers.  Entries for other questions are
ignored (such a file usually covers several datasets); a question with no entry is an error.  A row whose id is not among the questions, a duplicate row, and a
question without a row are errors naming them (``file:line`` for rows).  Both files may be jsonl or
Parquet.

The run goes through :func:`s3core.eval.runner.evaluate` with a method that hands back the given
predictions (or documents), so scoring, aggregation and ``results.json`` are `s3 eval`'s own.
Extra files: ``scored.jsonl`` (per row: id, dataset, prediction, em, f1, span, judge, genacc, and
``choice`` for multiple-choice rows).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from s3core.config import Config, config_to_dict
from s3core.data.io import _iter_rows, _scalar_str, parse_contents
from s3core.errors import DataError, InvalidArgument
from s3core.eval.methods import MethodContext, MethodOutput, MethodSpec
from s3core.eval.runner import EvalOutcome, evaluate
from s3core.io import check_output_dir, write_jsonl
from s3core.types import Doc, Question

__all__ = [
    "ScoreJob",
    "load_contexts",
    "load_predictions",
    "load_reference_contexts",
    "parse_context_with_info",
    "parse_document",
    "run_score_job",
    "scored_rows",
]

Key = tuple[str, str]  # (dataset, question id)


def _index(sets: dict[str, list[Question]]) -> dict[str, list[str]]:
    """question id -> the datasets that hold it."""
    where: dict[str, list[str]] = {}
    for name, qs in sets.items():
        for q in qs:
            where.setdefault(q.id, []).append(name)
    return where


def _match_rows(path: str | Path, sets: dict[str, list[Question]], field_name: str,
                parse: Any) -> dict[Key, Any]:
    where = _index(sets)
    out: dict[Key, Any] = {}
    first: dict[Key, int] = {}
    for lineno, row in _iter_rows(path):
        if not isinstance(row, dict):
            raise DataError(str(path), lineno, f"expected a JSON object, got {type(row).__name__}")
        rid = _scalar_str(row.get("id")) if not isinstance(row.get("id"), bool) else None
        if rid is None or not rid.strip():
            raise DataError(str(path), lineno, f"missing 'id' (a string or number), got {row.get('id')!r}")
        ds = row.get("dataset")
        if ds is not None and not isinstance(ds, str):
            raise DataError(str(path), lineno, f"'dataset' must be a string, got {ds!r}")
        if ds:
            if ds not in sets:
                raise DataError(str(path), lineno, f"dataset {ds!r} is not among the question files "
                                f"({', '.join(sets)})")
            if ds not in where.get(rid, []):
                raise DataError(str(path), lineno, f"id {rid!r} is not a question of dataset {ds!r}")
        else:
            names = where.get(rid, [])
            if not names:
                raise DataError(str(path), lineno, f"id {rid!r} is not among the questions "
                                f"({', '.join(sets)})")
            if len(names) > 1:
                raise DataError(str(path), lineno, f"id {rid!r} is in several datasets ({', '.join(names)}): "
                                "give the row a 'dataset'")
            ds = names[0]
        key = (ds, rid)
        if key in out:
            raise DataError(str(path), lineno, f"a second row for {ds}/{rid} (first on line {first[key]})")
        if field_name not in row:
            raise DataError(str(path), lineno, f"missing {field_name!r}")
        out[key] = parse(path, lineno, row[field_name])
        first[key] = lineno
    missing = [f"{name}/{q.id}" for name, qs in sets.items() for q in qs if (name, q.id) not in out]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InvalidArgument(f"{path}: no row for {len(missing)} question(s): {', '.join(missing[:10])}{more}")
    return out


def _parse_prediction(path: str | Path, lineno: int, value: Any) -> str:
    s = _scalar_str(value)
    if s is None or isinstance(value, bool):
        raise DataError(str(path), lineno, f"'prediction' must be a string, got {value!r}")
    return s


def parse_document(value: Any, n: int) -> Doc:
    """One context document in any of the accepted forms (module docstring); ``n`` numbers a
    document without an id.  Raises ValueError on anything else."""
    if isinstance(value, dict) and isinstance(value.get("document"), dict):
        value = value["document"]  # a Search-R1 /retrieve hit with return_scores
    if isinstance(value, str):
        title, text = parse_contents(value) if "\n" in value else ("", value)
        return Doc(id=f"ctx{n}", title=title, text=text)
    if not isinstance(value, dict):
        raise ValueError(f"a document must be a string or an object, got {type(value).__name__}")
    did = _scalar_str(value.get("id")) or f"ctx{n}"
    title, text = value.get("title"), value.get("text")
    if isinstance(text, str) and (title is None or isinstance(title, str)):
        return Doc(id=did, title=title or "", text=text)
    contents = value.get("contents")
    if isinstance(contents, str):
        t, x = parse_contents(contents)
        return Doc(id=did, title=t, text=x)
    raise ValueError("a document object needs a string 'contents' or 'text' (and optionally 'title')")


def _parse_documents(path: str | Path, lineno: int, value: Any) -> list[Doc]:
    if not isinstance(value, list):
        raise DataError(str(path), lineno, f"'documents' must be a list, got {type(value).__name__}")
    docs = []
    for i, v in enumerate(value):
        try:
            docs.append(parse_document(v, i + 1))
        except ValueError as exc:
            raise DataError(str(path), lineno, f"documents[{i}]: {exc}") from None
    return docs


def load_predictions(path: str | Path, sets: dict[str, list[Question]]) -> dict[Key, str]:
    """``{(dataset, id): prediction}``, one for every question of ``sets`` (module docstring)."""
    return _match_rows(path, sets, "prediction", _parse_prediction)


def load_contexts(path: str | Path, sets: dict[str, list[Question]]) -> dict[Key, list[Doc]]:
    """``{(dataset, id): documents}``, one for every question of ``sets`` (module docstring).
    A reference-format ``.json`` context file is recognised and read with
    :func:`load_reference_contexts`."""
    ref = _reference_file(path)
    if ref is not None:
        return load_reference_contexts(path, sets, ref)
    return _match_rows(path, sets, "documents", _parse_documents)


_DOC_HEADER = re.compile(r"(?:^|(?<=\s))Doc[ \t]*(\d+)[ \t]*\([ \t]*Title[ \t]*:[ \t]*", re.IGNORECASE)


def parse_context_with_info(text: str) -> list[Doc]:
    """Documents of a formatted context (``Doc n (Title: t) text`` or ``Doc n (Title: t)\\ntext``,
    one after another).  A title may hold parentheses (``Paris (film)``); text before the first
    header is ignored."""
    heads = list(_DOC_HEADER.finditer(text))
    docs: list[Doc] = []
    for j, m in enumerate(heads):
        end = heads[j + 1].start() if j + 1 < len(heads) else len(text)
        chunk = text[m.end():end]
        depth, cut = 1, -1
        for pos, ch in enumerate(chunk):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    cut = pos
                    break
            elif ch == "\n":
                break
        if cut < 0:  # no closing bracket on the header line: the title is the line
            line, _, rest = chunk.partition("\n")
            title, body = line.strip().rstrip(")"), rest
        else:
            title, body = chunk[:cut], chunk[cut + 1:]
        docs.append(Doc(id=f"ctx{len(docs) + 1}", title=title.strip().strip('"'), text=" ".join(body.split())))
    return docs


def _reference_file(path: str | Path) -> dict[str, Any] | None:
    """The parsed object when ``path`` is one JSON object of reference-format entries, else None."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".json":
        return None
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # JSON lines named .json: read as rows
    if not isinstance(obj, dict) or not obj:
        raise DataError(str(path), None, "a .json context file must be one object {question: {\"context_with_info\": ...}}")
    for q, v in obj.items():
        if not isinstance(v, dict) or not isinstance(v.get("context_with_info"), str):
            raise DataError(str(path), None, f"entry {q[:80]!r}: expected {{\"context_with_info\": \"Doc 1 (Title: ...) ...\"}}")
    return obj


def _qtext(s: str) -> str:
    return " ".join(s.split())


def load_reference_contexts(path: str | Path, sets: dict[str, list[Question]],
                            obj: dict[str, Any] | None = None) -> dict[Key, list[Doc]]:
    """``{(dataset, id): documents}`` from a reference-format context file (module docstring)."""
    obj = obj if obj is not None else _reference_file(path)
    if obj is None:
        raise DataError(str(path), None, "not a reference-format .json context file")
    by_text: dict[str, list[Doc]] = {_qtext(q): parse_context_with_info(v["context_with_info"]) for q, v in obj.items()}
    out: dict[Key, list[Doc]] = {}
    missing: list[str] = []
    for name, qs in sets.items():
        for q in qs:
            docs = by_text.get(_qtext(q.question))
            if docs is None and "\nOptions:" in q.question:  # an entry keyed by the stem alone
                docs = by_text.get(_qtext(q.question.split("\nOptions:", 1)[0]))
            if docs is None:
                missing.append(f"{name}/{q.id}")
            else:
                out[(name, q.id)] = docs
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InvalidArgument(f"{path}: no entry for {len(missing)} question(s) (matched by question text): "
                              f"{', '.join(missing[:10])}{more}")
    return out


def _given(name: str, by_key: dict[Key, Any], contexts: bool) -> MethodSpec:
    def run(questions: Sequence[Question], ctx: MethodContext) -> list[MethodOutput]:
        if contexts:
            return [MethodOutput(docs=list(by_key[(q.dataset, q.id)])) for q in questions]
        return [MethodOutput(docs=[], answer=by_key[(q.dataset, q.id)]) for q in questions]

    desc = "documents from a file, answered by the generator" if contexts else "predictions from a file"
    return MethodSpec(name=name, fn=run, needs_retriever=False, uses_docs=contexts, description=desc)


def scored_rows(outcome: EvalOutcome) -> list[dict[str, Any]]:
    rows = []
    for p in outcome.predictions:
        row: dict[str, Any] = {"id": p.id, "dataset": p.dataset, "prediction": p.prediction, "em": p.em,
                               "f1": p.f1, "span": p.span, "judge": p.judge, "genacc": p.genacc}
        if p.choice is not None or _is_mc(p):
            row["choice"] = p.choice
        if p.doc_ids:
            row["doc_ids"] = p.doc_ids
            row["answer_in_docs"] = p.answer_in_docs
        rows.append(row)
    return rows


def _is_mc(p: Any) -> bool:
    from s3core.metrics import mc_gold

    return mc_gold(p.question, p.golden_answers) is not None


@dataclass
class ScoreJob:
    questions: list[str]
    out: str
    predictions: str = ""  # exactly one of predictions / contexts
    contexts: str = ""
    name: str = ""  # the method name in results.json (default: the input file's name)
    judge: str = "none"  # none | model (span, else the judge) | only (the judge on every row)
    mc: str = "auto"
    generator: str = ""  # host:port; empty = start one when the run needs a generator
    config: Config = field(default_factory=Config)
    config_path: str = ""
    show_progress: bool = True


def run_score_job(job: ScoreJob) -> dict[str, Any]:
    """Score ``job``; writes ``results.json``, ``results.md`` and ``scored.jsonl`` under ``job.out``
    and returns the results dict."""
    from s3core.eval.job import load_question_sets, local_services
    from s3core.eval.report import write_outcome

    if bool(job.predictions) == bool(job.contexts):
        raise InvalidArgument("give exactly one of --predictions and --contexts")
    if job.judge not in ("none", "model", "only"):
        raise InvalidArgument(f"--judge must be none, model or only, got {job.judge!r}")
    check_output_dir(job.out)
    sets = load_question_sets(job.questions, mc=job.mc)
    source = job.contexts or job.predictions
    by_key: dict[Key, Any] = load_contexts(source, sets) if job.contexts else load_predictions(source, sets)
    name = job.name or Path(source).name.split(".", 1)[0]
    spec = _given(name, by_key, bool(job.contexts))
    need_generator = bool(job.contexts) or job.judge != "none"
    cfg: dict[str, Any] = {"method": name, "scored_from": "contexts" if job.contexts else "predictions",
                           "source": str(source), "questions": list(job.questions), "judge": job.judge,
                           "mc": job.mc, "k": None}
    options = {"judge_mode": "only" if job.judge == "only" else "fallback", "mc": job.mc}
    if not need_generator:
        outcome = evaluate(sets, name, answer=_no_answer, judge=None, search=None, show_progress=job.show_progress,
                           options=options, method_spec=spec, batch_size=max(8, job.config.eval.batch_size))
        return _write(job, outcome, cfg, write_outcome)
    from s3core.rpc.clients import GeneratorClient

    with local_services(job.config, generator=job.generator, need_retriever=False,
                        config_path=job.config_path) as addrs:
        gen = GeneratorClient(addrs.generator)
        try:
            gen.wait_ready()
            info = gen.model_info()
            cfg.update(generator_model=info.model, generator_backend=info.backend, prompt_version=info.prompt_version,
                       platform=config_to_dict(job.config))

            def answer(items: Any) -> list[str]:
                return list(gen.answer(items).answers)

            def judge(items: Any) -> list[bool]:
                return list(gen.judge(items).correct)

            outcome = evaluate(sets, name, answer=answer, judge=judge if job.judge != "none" else None, search=None,
                               batch_size=job.config.eval.batch_size, show_progress=job.show_progress,
                               options=options, method_spec=spec)
        finally:
            gen.close()
    return _write(job, outcome, cfg, write_outcome)


def _no_answer(items: Any) -> list[str]:  # pragma: no cover - predictions never ask the generator
    raise AssertionError("the generator is not asked when predictions are given")


def _write(job: ScoreJob, outcome: EvalOutcome, cfg: dict[str, Any], write_outcome: Any) -> dict[str, Any]:
    if job.contexts:
        sizes = [len(p.doc_ids) for p in outcome.predictions]
        cfg["k"] = max(sizes) if sizes else 0
    res = write_outcome(job.out, outcome, cfg)
    write_jsonl(Path(job.out) / "scored.jsonl", scored_rows(outcome))
    return res
