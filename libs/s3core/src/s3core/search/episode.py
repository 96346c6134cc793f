"""The s3 episode engine (spec §2): many episodes in lock-step, batched generation and search.

Each round, every still-active episode takes one turn: one ``Policy.generate`` call covers all of
them, and the queries they issue go to the search function in one call.  Per episode:

* Block 0 is the naive top-``initial_k`` for the raw question; it is part of the prompt.
* Turns ``1..max_turns`` may search.  Turn ``max_turns + 1`` is the final turn: no search runs after
  it, whatever it says.  The observation that precedes the final turn ends with
  :data:`~s3core.search.prompts.FINAL_TURN_NOTE` ("no searches are left ..."); with
  ``max_turns == 0`` the note is in the initial prompt.  The final turn also stops at
  ``</search_complete>``.
* A turn is parsed (:func:`~s3core.search.parsing.parse_turn`); a selection applies to the latest
  block (a later selection for the same block replaces an earlier one).  Then: done -> the episode
  ends; final turn -> the episode ends; a query -> ``retrieve_k`` docs become a new block; otherwise
  the fixed feedback text is appended.  Invalid turns count as turns.

Token bookkeeping: ``token_ids`` = prompt (mask 0) + per turn the generated tokens (mask 1) + the
observation (mask 0).  The generated tokens are cut at the token level, right after the first token
that completes a stop string (``</query>``, and on the final turn ``</search_complete>``), or right
after an end-of-sequence token; they are never re-tokenised, so ``decode(token_ids[mask == 1])`` is
exactly what the policy produced (as cut).  Only observations are tokenised, on their own, and the
policy is always fed the token ids themselves, so what it conditions on during rollout is what the
learner scores.  An end-of-sequence token the policy generated stays in its turn's action tokens
(its log-probability is part of the policy's choice); ``Turn.raw_text`` skips special tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from s3core.config import SearchConfig
from s3core.errors import InvalidArgument, S3Error
from s3core.search.context import build_context
from s3core.search.parsing import QUERY_END, parse_turn
from s3core.search.profiles import PromptProfile, get_profile
from s3core.search.prompts import encode, prompt_token_ids
from s3core.search.trajectory import InfoBlock, Trajectory, Turn
from s3core.types import Doc, Question

__all__ = [
    "Policy",
    "SearchFn",
    "EpisodeStats",
    "STOP_QUERY",
    "STOP_DONE",
    "STOP_COMPLETE_END",
    "stops_for_turn",
    "decode",
    "cut_tokens",
    "eos_ids_of",
    "run_episodes",
]

STOP_QUERY = QUERY_END
# Searching turns also stop on the canonical "done" tag, so a finished searcher does not ramble on
# to max_new_tokens (a "false" value must not stop generation: the query follows it).
STOP_DONE = "<search_complete>true</search_complete>"
STOP_COMPLETE_END = "</search_complete>"


@runtime_checkable
class Policy(Protocol):
    """The searcher policy: token ids in, generated token ids out.

    ``generate`` returns, per prompt, the generated token ids (no prompt, no padding).  It may stop
    at the first stop string or keep going; the engine cuts either way.  Optional attributes the
    engine uses when present: ``set_seed(seed)`` (called once per :func:`run_episodes`),
    ``eos_token_ids`` (list of ints) and ``version`` (int, the policy version recorded in
    trajectories).
    """

    tokenizer: Any

    def generate(
        self, batch_token_ids: list[list[int]], max_new_tokens: int, temperature: float, stop: list[str]
    ) -> list[list[int]]: ...


# Retrieval for a batch of queries: (queries, k) -> top-k docs per query, in query order.
SearchFn = Callable[[list[str], int], list[list[Doc]]]


@dataclass
class EpisodeStats:
    """Where a :func:`run_episodes` call spent its time (for benchmarks and metrics)."""

    generate_s: float = 0.0
    search_s: float = 0.0
    generate_calls: int = 0
    search_calls: int = 0
    generated_tokens: int = 0
    turns: int = 0
    searches: int = 0
    invalid_turns: int = 0


def stops_for_turn(final: bool) -> list[str]:
    return [STOP_QUERY, STOP_COMPLETE_END] if final else [STOP_QUERY, STOP_DONE]


def decode(tokenizer: Any, ids: Sequence[int], *, skip_special: bool) -> str:
    if not ids:
        return ""
    return str(tokenizer.decode(list(ids), skip_special_tokens=skip_special, clean_up_tokenization_spaces=False))


def eos_ids_of(tokenizer: Any, extra: Sequence[int] | None = None) -> set[int]:
    ids: set[int] = set(int(i) for i in (extra or []))
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    return ids


def cut_tokens(tokenizer: Any, ids: Sequence[int], stops: Sequence[str], eos_ids: set[int] | None = None) -> list[int]:
    """The shortest prefix of ``ids`` that ends a turn.

    Cut right after the first end-of-sequence token, then right after the first token whose decoding
    completes any stop string.  Decoding a prefix gives a prefix of the text, so the earliest such
    token is found by binary search (a few decodes, not one per token).
    """
    out = [int(i) for i in ids]
    if eos_ids:
        for j, tok in enumerate(out):
            if tok in eos_ids:
                out = out[: j + 1]
                break
    stops = [s for s in stops if s]
    if not stops or not out:
        return out

    def has_stop(m: int) -> bool:
        text = decode(tokenizer, out[:m], skip_special=False)
        return any(s in text for s in stops)

    if not has_stop(len(out)):
        return out
    lo, hi = 1, len(out)  # has_stop(hi) is true
    while lo < hi:
        mid = (lo + hi) // 2
        if has_stop(mid):
            hi = mid
        else:
            lo = mid + 1
    return out[:hi]


@dataclass
class _Episode:
    traj: Trajectory
    finished: bool = False

    def append(self, ids: Sequence[int], action: bool) -> None:
        self.traj.token_ids.extend(ids)
        self.traj.action_mask.extend([1 if action else 0] * len(ids))


def _search(search: SearchFn, queries: list[str], k: int, stats: EpisodeStats) -> dict[str, list[Doc]]:
    """One batched call for the distinct ``queries``; returns query -> at most ``k`` docs."""
    uniq = list(dict.fromkeys(queries))
    if not uniq:
        return {}
    t0 = time.perf_counter()
    results = search(uniq, k)
    stats.search_s += time.perf_counter() - t0
    stats.search_calls += 1
    if len(results) != len(uniq):
        raise S3Error(f"search returned {len(results)} result lists for {len(uniq)} queries")
    return {q: list(r)[:k] for q, r in zip(uniq, results)}


def run_episodes(
    questions: Sequence[Question],
    policy: Policy,
    search: SearchFn,
    cfg: SearchConfig,
    temperature: float | None = None,
    n: int = 1,
    seed: int = 0,
    *,
    policy_version: int | None = None,
    stats: EpisodeStats | None = None,
    on_finish: Callable[[Trajectory], None] | None = None,
    profile: PromptProfile | None = None,
) -> list[Trajectory]:
    """Run ``n`` episodes per question in lock-step; trajectories in question order, then group index.

    ``temperature`` defaults to ``cfg.temperature_eval``.  ``on_finish`` is called with each
    trajectory as soon as its episode ends (its ``context`` already built), e.g. to stream it.
    ``profile`` is the prompt and observation layout (:mod:`s3core.search.profiles`; default ours);
    its cap on selected documents applies when lower than ``cfg.select_max``, and every trajectory
    records its ``name@version``.
    """
    cfg.validate("search")
    if n < 1:
        raise InvalidArgument(f"n (trajectories per question) must be >= 1, got {n}")
    temp = cfg.temperature_eval if temperature is None else float(temperature)
    if temp < 0:
        raise InvalidArgument(f"temperature must be >= 0, got {temp}")
    stats = stats if stats is not None else EpisodeStats()
    tokenizer = policy.tokenizer
    set_seed = getattr(policy, "set_seed", None)
    if callable(set_seed):
        set_seed(seed)
    version = int(policy_version if policy_version is not None else getattr(policy, "version", 0) or 0)
    eos = eos_ids_of(tokenizer, getattr(policy, "eos_token_ids", None))
    prof = profile if profile is not None else get_profile("")
    render_block, searcher_messages = prof.render_block, prof.searcher_messages
    block_observation, feedback_observation = prof.block_observation, prof.feedback_observation
    select_max = min(cfg.select_max, prof.select_max) if prof.select_max is not None else cfg.select_max

    # Block 0: naive RAG for the raw question; part of the prompt.
    block0 = _search(search, [q.question for q in questions], cfg.initial_k, stats)
    episodes: list[_Episode] = []
    prompts: dict[str, list[int]] = {}
    for q in questions:
        docs0 = block0[q.question]
        if q.question not in prompts:
            text0 = render_block(0, "", docs0, tokenizer, cfg.max_obs_tokens)
            msgs = searcher_messages(q.question, text0, select_max=select_max, max_turns=cfg.max_turns)
            prompts[q.question] = prompt_token_ids(tokenizer, msgs)
        prompt = prompts[q.question]
        for g in range(n):
            traj = Trajectory(
                question=q,
                blocks=[InfoBlock(index=0, query="", docs=list(docs0))],
                token_ids=list(prompt),
                action_mask=[0] * len(prompt),
                prompt_length=len(prompt),
                policy_version=version,
                group_index=g,
                prompt_profile=prof.tag,
            )
            episodes.append(_Episode(traj))

    def finish(ep: _Episode) -> None:
        ep.finished = True
        ep.traj.context = build_context(ep.traj.blocks, "none")
        if on_finish is not None:
            on_finish(ep.traj)

    for t in range(cfg.max_turns + 1):
        active = [e for e in episodes if not e.finished]
        if not active:
            break
        final = t == cfg.max_turns
        final_next = t + 1 == cfg.max_turns
        stops = stops_for_turn(final)
        t0 = time.perf_counter()
        outs = policy.generate([list(e.traj.token_ids) for e in active], cfg.max_new_tokens, temp, list(stops))
        stats.generate_s += time.perf_counter() - t0
        stats.generate_calls += 1
        if len(outs) != len(active):
            raise S3Error(f"policy returned {len(outs)} generations for {len(active)} prompts")

        pending: list[tuple[_Episode, Turn, str]] = []
        for ep, out in zip(active, outs):
            action = cut_tokens(tokenizer, list(out)[: cfg.max_new_tokens], stops, eos)
            text = decode(tokenizer, action, skip_special=True)
            latest = ep.traj.blocks[-1]
            parsed = parse_turn(text, len(latest.docs), select_max)
            if parsed.has_selection:
                latest.selected = list(parsed.important_ids)
                latest.has_selection = True
            turn = Turn(
                raw_text=text,
                query=parsed.query,
                important_ids=list(parsed.important_ids),
                search_complete=parsed.done,
                valid_action=parsed.valid,
            )
            ep.traj.turns.append(turn)
            ep.append(action, action=True)
            stats.turns += 1
            stats.generated_tokens += len(action)
            if not parsed.valid:
                stats.invalid_turns += 1
            if parsed.done or final:
                finish(ep)
            elif parsed.query is not None:
                pending.append((ep, turn, parsed.query))
            else:
                turn.observation = feedback_observation(final_next=final_next)
                ep.append(encode(tokenizer, turn.observation), action=False)

        if pending:
            found = _search(search, [q for _, _, q in pending], cfg.retrieve_k, stats)
            for ep, turn, query in pending:
                docs = found[query]
                block = InfoBlock(index=len(ep.traj.blocks), query=query, docs=docs)
                ep.traj.blocks.append(block)
                stats.searches += 1
                text = render_block(block.index, query, docs, tokenizer, cfg.max_obs_tokens)
                turn.observation = block_observation(text, final_next=final_next)
                ep.append(encode(tokenizer, turn.observation), action=False)

    for ep in episodes:  # the final turn ends every episode; this only guards against future edits
        if not ep.finished:
            finish(ep)
    return [e.traj for e in episodes]
