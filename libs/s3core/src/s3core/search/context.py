"""The context handed to the generator (spec §3), built from a trajectory's blocks.

Reads :class:`~s3core.search.trajectory.InfoBlock` fields only -- never the text the searcher saw --
so a title such as ``Mercury (planet)`` comes through untouched.

1. Each block **with** a selection contributes its selected docs, in selection order (blocks in
   block order).
2. Then each block **without** a selection contributes all its docs, in block order (block 0 when
   the searcher never selected from it; a last block followed directly by "done").
3. Deduplicate by doc id, then by identical text; the first occurrence wins.  An empty id or an
   empty text never counts as a duplicate.

Ablations (evaluation time, same trajectories):

* ``none`` -- the rules above;
* ``no_selection`` -- all docs of all blocks, in block order (selections ignored);
* ``no_initial`` -- the rules above without block 0;
* ``both`` -- all docs of blocks 1.. (no selection, no initial block).
"""

from __future__ import annotations

from typing import Literal, Sequence

from s3core.errors import InvalidArgument
from s3core.generation.prompts import format_context
from s3core.search.trajectory import InfoBlock
from s3core.types import Doc

__all__ = ["ABLATIONS", "Ablation", "build_context", "context_text", "dedup_docs"]

Ablation = Literal["none", "no_selection", "no_initial", "both"]
ABLATIONS: tuple[str, ...] = ("none", "no_selection", "no_initial", "both")


def dedup_docs(docs: Sequence[Doc]) -> list[Doc]:
    """Drop later docs whose id, or (failing that) whose text, was already seen."""
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    out: list[Doc] = []
    for d in docs:
        if d.id and d.id in seen_ids:
            continue
        if d.text and d.text in seen_texts:
            continue
        if d.id:
            seen_ids.add(d.id)
        if d.text:
            seen_texts.add(d.text)
        out.append(d)
    return out


def build_context(traj_blocks: Sequence[InfoBlock], ablation: Ablation | str = "none") -> list[Doc]:
    """The generator's documents for one trajectory (spec §3 steps 1-3), in order."""
    if ablation not in ABLATIONS:
        raise InvalidArgument(f"unknown context ablation {ablation!r} (known: {', '.join(ABLATIONS)})")
    blocks = sorted(traj_blocks, key=lambda b: b.index)
    if ablation in ("no_initial", "both"):
        blocks = [b for b in blocks if b.index != 0]
    docs: list[Doc] = []
    if ablation in ("no_selection", "both"):
        for b in blocks:
            docs.extend(b.docs)
        return dedup_docs(docs)
    for b in blocks:
        if b.has_selection:
            docs.extend(b.selected_docs())
    for b in blocks:
        if not b.has_selection:
            docs.extend(b.docs)
    return dedup_docs(docs)


def context_text(traj_blocks: Sequence[InfoBlock], ablation: Ablation | str = "none") -> str:
    """Spec §3 step 4: ``Doc n (Title: ...) text`` lines, renumbered from 1."""
    return format_context(build_context(traj_blocks, ablation))
