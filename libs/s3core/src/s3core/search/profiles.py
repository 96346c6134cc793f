"""Searcher prompt profiles: the prompt and observation layout an episode is rendered in.

A policy answers best in the layout it was trained on.  Ours (``s3-platform``, the default) is
:mod:`s3core.search.prompts`.  ``reference-layout`` renders episodes the way the s3 authors'
released checkpoints (e.g. ``s3-8-3-3-20steps``) saw them in training, described here in our own
words from the facts of their layout:

* one user message, no system message (the chat template's default system text, if any, stays);
* the question inside ``<question>`` ... ``</question>``, followed by the first search's results in a
  bare ``<information>`` ... ``</information>`` block (no ``block=`` / ``query=`` attributes);
* documents as ``Doc n(Title: "title") text`` lines, numbered from 1 within each block;
* after a searched turn the environment appends ``\\n\\n<information>docs</information>\\n\\n``;
* after a turn with no usable action it appends a nudge that ends by opening a ``<query>`` tag (the
  policy continues inside it), not a ``<feedback>`` block;
* no "no searches are left" note before the last turn;
* the prompt asks for at most 3 important documents, and ids outside the block are ignored rather
  than making the turn invalid (``lenient_ids``); ``<search_complete>`` takes true/yes/1/y in any case.

The action tags are the same in both (``<think>``, ``<important_info>[..]``, ``<search_complete>``,
``<query>{"query": ...}</query>``).  Each profile has a ``version``; trajectories, checkpoints and
results record ``name@version`` (:attr:`PromptProfile.tag`): :func:`~s3core.search.episode.run_episodes`
renders with the profile it is given and stores the tag in every trajectory; the searcher service
renders with ``searcher.prompt_profile`` and reports it (``PolicyInfo``); a policy folder records the
profile it was trained with in :data:`PROFILE_FILE` (:func:`write_profile_record`), and the searcher
warns or refuses (``searcher.prompt_profile_mismatch``) when it serves a policy under another.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from s3core.errors import DataError, InvalidArgument
from s3core.search import prompts
from s3core.types import Doc

__all__ = ["DEFAULT_PROFILE", "PROFILES", "PROFILE_FILE", "PromptProfile", "check_profile_match", "get_profile",
           "read_profile_record", "write_profile_record"]

DEFAULT_PROFILE = "s3-platform"


@dataclass(frozen=True)
class PromptProfile:
    """The four rendering functions an episode needs, with the signatures of :mod:`prompts`'s own."""

    name: str
    version: str
    description: str
    # (question, block0_text, *, select_max, max_turns) -> chat messages of the prompt
    searcher_messages: Callable[..., list[dict[str, str]]]
    # (index, query, docs, tokenizer, max_obs_tokens) -> one information block
    render_block: Callable[[int, str, Sequence[Doc], Any, int], str]
    # (block_text, *, final_next) -> what is appended after a searched turn
    block_observation: Callable[..., str]
    # (*, final_next) -> what is appended after a turn with no usable action
    feedback_observation: Callable[..., str]
    select_max: int | None = None  # the prompt's own cap on important documents (None: search.select_max)
    lenient_ids: bool = False  # out-of-block document ids are dropped instead of invalidating the turn
    complete_values: frozenset[str] = field(default_factory=lambda: frozenset({"true"}))

    @property
    def tag(self) -> str:
        """``name@version``, what records should carry."""
        return f"{self.name}@{self.version}"


# --- the reference layout ------------------------------------------------------------------------

REFERENCE_VERSION = "ref-layout-v1"

_REF_INSTRUCTIONS = """\
You help a separate answering model by searching for documents; you do not answer the question yourself.
You get a question and the results of a first search for it. First judge whether those results already let the answering model answer.
- If they do, write <search_complete>True</search_complete> and stop.
- If they do not, search: write a new query in JSON between <query> and </query>. The top results come back between <information> and </information>. Then list the ids of the useful documents of that block (up to 3, only ids of the current block) between <important_info> and </important_info>, e.g. <important_info>[1, 4]</important_info>, and say with <search_complete>False</search_complete> that you want to search again, or with <search_complete>True</search_complete> that you are done.
You may think inside <think></think> whenever you like. Only the documents you mark as important (and the first results) reach the answering model.

The loop looks like this:
<query>
{{"query": "[a search query]"}}
</query>
<information>
[results of that query]
</information>
<important_info>
[ids]
</important_info>
<search_complete>
False
</search_complete>
... (more rounds) ...
<search_complete>
True
</search_complete>

Here are the question and the first results:
<question>
{question}
</question>
{block0}
"""

_REF_NUDGE = ("\n\nThese documents are not enough to answer the question yet. Write a new search query in JSON "
              "between <query> and </query>:\n<query>\n")


def _ref_docs(docs: Sequence[Doc]) -> str:
    return "".join(f'Doc {i}(Title: "{" ".join(d.title.split())}") {d.text.strip()}\n'
                   for i, d in enumerate(docs, start=1))


def _ref_render_block(index: int, query: str, docs: Sequence[Doc], tokenizer: Any, max_obs_tokens: int) -> str:
    body = prompts.truncate_to_tokens(tokenizer, _ref_docs(docs), max_obs_tokens).strip()
    if index == 0:
        return f"{prompts.INFO_OPEN}>\n{body}\n{prompts.INFO_CLOSE}"
    return f"{prompts.INFO_OPEN}>{body}{prompts.INFO_CLOSE}"


def _ref_searcher_messages(question: str, block0_text: str, *, select_max: int, max_turns: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": _REF_INSTRUCTIONS.format(question=str(question).strip(), block0=block0_text)}]


def _ref_block_observation(block_text: str, *, final_next: bool) -> str:
    return f"\n\n{block_text}\n\n"


def _ref_feedback_observation(*, final_next: bool) -> str:
    return _REF_NUDGE


PROFILES: dict[str, PromptProfile] = {
    DEFAULT_PROFILE: PromptProfile(
        name=DEFAULT_PROFILE, version=prompts.SEARCHER_PROMPT_VERSION,
        description="ours: system message, <information block=.. query=..>, [n] Title lines, <feedback>, final-turn note",
        searcher_messages=prompts.searcher_messages, render_block=prompts.render_block,
        block_observation=prompts.block_observation, feedback_observation=prompts.feedback_observation,
    ),
    "reference-layout": PromptProfile(
        name="reference-layout", version=REFERENCE_VERSION,
        description="for checkpoints trained on the s3 authors' layout: <question>, bare <information>, "
                    "Doc n(Title: ..) lines, a <query> nudge on invalid turns, up to 3 ids",
        searcher_messages=_ref_searcher_messages, render_block=_ref_render_block,
        block_observation=_ref_block_observation, feedback_observation=_ref_feedback_observation,
        select_max=3, lenient_ids=True, complete_values=frozenset({"true", "yes", "1", "y"}),
    ),
}


def get_profile(name: str) -> PromptProfile:
    """The profile named ``name`` (``searcher.prompt_profile``); InvalidArgument naming the known ones."""
    key = name or DEFAULT_PROFILE
    if key not in PROFILES:
        raise InvalidArgument(f"unknown searcher prompt profile {name!r} (known: {', '.join(sorted(PROFILES))})")
    return PROFILES[key]


def check_profile_match(served: PromptProfile, trained_tag: str, *, strict: bool = False) -> str:
    """Compare the served profile with the ``name@version`` a policy was trained under.

    Returns "" when they match (or the policy records none), else a warning sentence; with
    ``strict`` a mismatch raises :class:`InvalidArgument` instead."""
    if not trained_tag or trained_tag == served.tag:
        return ""
    msg = (f"the policy was trained with searcher prompt profile {trained_tag} but is served with {served.tag}; "
           "its actions will be off-distribution (set searcher.prompt_profile to the training one)")
    if strict:
        raise InvalidArgument(msg)
    return msg


#: The file in a policy folder that says which prompt profile the policy was trained with.
PROFILE_FILE = "s3_prompt_profile.json"


def write_profile_record(folder: str | os.PathLike[str], profile: PromptProfile | str) -> Path:
    """Record in ``folder`` (an exported policy) the profile it was trained with."""
    tag = profile.tag if isinstance(profile, PromptProfile) else str(profile)
    if "@" not in tag:
        raise InvalidArgument(f"a prompt profile record needs name@version, got {tag!r}")
    path = Path(folder) / PROFILE_FILE
    path.write_text(json.dumps({"prompt_profile": tag}, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_profile_record(folder: str | os.PathLike[str]) -> str:
    """The ``name@version`` a policy folder records it was trained with; "" when it records none
    (not a local folder, or a policy exported before the record existed)."""
    path = Path(folder) / PROFILE_FILE
    if not path.is_file():
        return ""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(str(path), None, f"unreadable prompt profile record: {exc}") from None
    tag = d.get("prompt_profile") if isinstance(d, dict) else None
    if not isinstance(tag, str) or "@" not in tag:
        raise DataError(str(path), None, f"'prompt_profile' must be a name@version string, got {tag!r}")
    return tag
