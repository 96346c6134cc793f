"""``s3 show``: one saved s3 episode, rendered readably in the terminal (rich; the CLI's renderer, not s3core's).

Reads a ``trajectories.jsonl`` written by `s3 eval` (see :mod:`s3core.eval.report`) and, when a
``predictions.jsonl`` sits next to it, the prediction and its correctness.  Everything shown comes
from the structured trajectory (blocks, selections, parsed actions), and all text is rendered as
plain text -- never as rich markup -- so a title like ``Mercury (planet)`` or a ``[1]`` in a
document prints exactly as stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from s3core.errors import InvalidArgument, NotFound
from s3core.search.context import build_context
from s3core.search.trajectory import InfoBlock, Trajectory

__all__ = ["load_records", "pick_record", "find_prediction", "render_record", "show"]

SNIPPET = 220


def load_records(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"{p}: no such file (expected a trajectories.jsonl written by `s3 eval`)")
    out: list[dict[str, Any]] = []
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise InvalidArgument(f"{p}:{n}: not JSON ({exc})") from None
            if not isinstance(rec, dict) or "trajectory" not in rec:
                raise InvalidArgument(f"{p}:{n}: not a trajectory record (no 'trajectory' key)")
            out.append(rec)
    if not out:
        raise InvalidArgument(f"{p}: no trajectories in the file")
    return out


def pick_record(records: Sequence[dict[str, Any]], qid: str | None = None, index: int | None = None) -> dict[str, Any]:
    """By question id (``ID`` or ``DATASET/ID``), else by 0-based position (default: the first)."""
    if qid is not None:
        for rec in records:
            if str(rec.get("id")) == qid or f"{rec.get('dataset')}/{rec.get('id')}" == qid:
                return rec
        raise NotFound(f"no trajectory for question id {qid!r} ({len(records)} in the file)")
    i = 0 if index is None else index
    if not -len(records) <= i < len(records):
        raise InvalidArgument(f"--index {i} is out of range: the file holds {len(records)} trajectories")
    return records[i]


def find_prediction(traj_path: str | Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The matching row of ``predictions.jsonl`` next to the trajectories file, if any."""
    preds = Path(traj_path).with_name("predictions.jsonl")
    if not preds.is_file():
        return None
    with preds.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if str(row.get("id")) == str(record.get("id")) and row.get("dataset") == record.get("dataset"):
                return dict(row)
    return None


def _snip(s: str, full: bool) -> str:
    s = " ".join(s.split())
    return s if full or len(s) <= SNIPPET else s[: SNIPPET - 1] + "…"


def _block_table(block: InfoBlock, full: bool) -> Any:
    from rich.table import Table
    from rich.text import Text

    order = {doc_id: n for n, doc_id in enumerate(block.selected, start=1)}
    t = Table(show_header=True, header_style="bold", expand=False, box=None, pad_edge=False)
    t.add_column("#", justify="right", no_wrap=True)
    t.add_column("sel", no_wrap=True)
    t.add_column("title", style="cyan")
    t.add_column("text")
    for i, d in enumerate(block.docs, start=1):
        sel = Text(f"✓{order[i]}", style="bold green") if i in order else Text("")
        t.add_row(Text(str(i)), sel, Text(d.title), Text(_snip(d.text, full)))
    if not block.docs:
        t.add_row(Text(""), Text(""), Text("(no documents found)", style="dim"), Text(""))
    return t


def _block_title(block: InfoBlock) -> Any:
    from rich.text import Text

    head = Text(f"Block {block.index}", style="bold")
    if block.index == 0:
        head.append("  naive RAG for the question", style="dim")
    else:
        head.append("  query: ", style="dim")
        head.append(block.query, style="magenta")
    if block.has_selection:
        head.append(f"  selected {block.selected}" if block.selected else "  selected none", style="green")
    else:
        head.append("  no selection (all docs go to the context)", style="yellow")
    return head


def _yn(v: Any) -> Any:
    from rich.text import Text

    if v is None:
        return Text("–", style="dim")
    return Text("✓ yes", style="bold green") if v else Text("✗ no", style="bold red")


def render_record(record: dict[str, Any], prediction: dict[str, Any] | None = None, console: Any = None,
                  full: bool = False) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.text import Text

    from s3core.eval.report import read_trajectory_record

    c = console or Console(soft_wrap=False)
    traj: Trajectory = read_trajectory_record(record)
    ablation = str(record.get("ablation") or "none")
    q = traj.question
    head = Text()
    head.append(f"{record.get('method', 's3')}", style="bold")
    head.append(f"  {record.get('dataset') or q.dataset}/{record.get('id') or q.id}")
    head.append(f"  policy v{traj.policy_version}  turns {len(traj.turns)}  searches {traj.n_searches}"
                f"  {'done by the searcher' if traj.done else 'ran out of turns'}", style="dim")
    c.rule(head)
    qtext = Text(q.question)
    qtext.append("\ngold: ", style="dim")
    qtext.append(" | ".join(q.golden_answers) or "(none)", style="green")
    c.print(Panel(qtext, title="Question", title_align="left"))

    blocks = sorted(traj.blocks, key=lambda b: b.index)
    if blocks:
        c.print(_block_title(blocks[0]))
        c.print(_block_table(blocks[0], full))
    next_block = 1
    latest = 0
    for n, turn in enumerate(traj.turns, start=1):
        parsed = Text()
        if turn.important_ids or "important_info" in turn.raw_text:
            parsed.append(f"select from block {latest}: {list(turn.important_ids)}  ", style="green")
        parsed.append(f"done: {'yes' if turn.search_complete else 'no'}  ")
        if turn.query:
            parsed.append("query: ", style="dim")
            parsed.append(turn.query, style="magenta")
            parsed.append("  ")
        if not turn.valid_action:
            parsed.append("invalid turn (feedback given)", style="bold red")
        raw = Text(turn.raw_text.strip() or "(empty)", style="" if turn.raw_text.strip() else "dim")
        c.print(Panel(Group(raw, Text(""), parsed), title=f"Turn {n}", title_align="left", border_style="blue"))
        produced = None
        if (turn.query and not turn.search_complete and next_block < len(blocks)
                and blocks[next_block].query == turn.query):
            produced = blocks[next_block]
            next_block += 1
        if produced is not None:
            latest = produced.index
            c.print(_block_title(produced))
            c.print(_block_table(produced, full))
        elif turn.observation.strip():
            c.print(Text(_snip(turn.observation, full), style="dim yellow"))
    for b in blocks[next_block:]:  # not matched to a turn (should not happen): show them anyway
        c.print(_block_title(b))
        c.print(_block_table(b, full))

    ctx = build_context(traj.blocks, ablation)
    lines = Text()
    for i, d in enumerate(ctx, start=1):
        if i > 1:
            lines.append("\n")
        lines.append(f"Doc {i} ", style="bold")
        lines.append(f"(Title: {d.title})", style="cyan")
        lines.append(" " + _snip(d.text, full))
    if not ctx:
        lines.append("(empty: closed book)", style="dim")
    c.print(Panel(lines, title=f"Context for the generator (ablation: {ablation}, {len(ctx)} docs)",
                  title_align="left", border_style="cyan"))

    if prediction is not None:
        p = Text()
        p.append("prediction: ", style="dim")
        p.append(str(prediction.get("prediction", "")), style="bold")
        p.append("\ngold: ", style="dim")
        p.append(" | ".join(prediction.get("golden_answers") or q.golden_answers), style="green")
        body = Group(p, Text(""), Text.assemble("GenAcc ", _yn(prediction.get("genacc")), "   EM ", _yn(prediction.get("em")),
                                                 "   span ", _yn(prediction.get("span")), "   judge ",
                                                 _yn(prediction.get("judge"))))
        c.print(Panel(body, title="Answer", title_align="left", border_style="green" if prediction.get("genacc") else "red"))
    else:
        c.print(Text("(no predictions.jsonl next to the file: correctness not shown)", style="dim"))


def show(path: str | Path, qid: str | None = None, index: int | None = None, console: Any = None,
         full: bool = False) -> dict[str, Any]:
    """Render one trajectory of ``path``; returns the record shown."""
    records = load_records(path)
    rec = pick_record(records, qid=qid, index=index)
    render_record(rec, find_prediction(path, rec), console=console, full=full)
    return rec
