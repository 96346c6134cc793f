"""Rebuild a trajectory's token sequence with another tokenizer (for supervised fine-tuning).

A trajectory recorded by one searcher (say a bigger model, through ``s3 eval --method s3``) holds
*that* model's token ids.  To train a different student on it, :func:`replay_tokens` lays the
same episode out again, with the student's tokenizer, exactly as
:func:`s3core.search.episode.run_episodes` would have laid it out had the student produced the same
turns against the same search results:

* prompt (mask 0): :func:`~s3core.search.prompts.searcher_messages` over block 0 rendered with
  :func:`~s3core.search.prompts.render_block` (truncated to ``cfg.max_obs_tokens`` *student*
  tokens), through :func:`~s3core.search.prompts.prompt_token_ids`;
* per turn, the action (mask 1): ``encode(tokenizer, turn.raw_text)``;
* per turn that did not end the episode, the observation (mask 0): the next information block
  re-rendered with the student's tokenizer (a turn with a query), else the feedback text, with
  :data:`~s3core.search.prompts.FINAL_TURN_NOTE` before the final turn -- the same functions the
  engine calls, so the student's truncation of long blocks applies.

These functions are the prompt profile's (:mod:`s3core.search.profiles`): by default the one the
trajectory records it was rendered in (``Trajectory.prompt_profile``, by name; ours when it records
none), so an episode of the reference layout is replayed in the reference layout.

Choices (documented in docs/training.md, "Warm start: s3 sft"):

* **No end-of-sequence token is added to actions.**  ``Turn.raw_text`` skips special tokens, so an
  EOS the original policy generated is not in it; well-formed turns end at a stop string
  (``</query>``, ``<search_complete>true</search_complete>``, ``</search_complete>`` on the final
  turn), where the engine cuts generation anyway, so the student needs no EOS to end a turn.
* **Actions are re-tokenised canonically** (``encode`` of the text).  When the original policy is
  the student itself and it generated the canonical tokenisation (the usual case), the replay is
  token-for-token the rollout; a policy that produced a non-canonical split of the same text
  replays as the canonical one (same text, same loss target up to tokenisation).

The episode's structure is checked against ``cfg`` (turn count vs ``cfg.max_turns``, one block per
query turn): a trajectory recorded with other search settings is refused with a message saying what
does not fit, rather than replayed with a prompt that contradicts it.
"""

from __future__ import annotations

from typing import Any

from s3core.config import SearchConfig
from s3core.errors import InvalidArgument
from s3core.search.profiles import PromptProfile, get_profile
from s3core.search.prompts import encode, prompt_token_ids
from s3core.search.trajectory import Trajectory

__all__ = ["replay_tokens", "replay_trajectory", "trajectory_profile"]


def trajectory_profile(traj: Trajectory) -> PromptProfile:
    """The prompt profile ``traj`` was rendered in, by the name it records (ours when it records
    none); InvalidArgument for a name this code does not know."""
    name = traj.prompt_profile.split("@", 1)[0] if traj.prompt_profile else ""
    try:
        return get_profile(name)
    except InvalidArgument as exc:
        raise InvalidArgument(f"trajectory of question {traj.question.id!r}: {exc}") from None


def replay_tokens(traj: Trajectory, tokenizer: Any, cfg: SearchConfig,
                  profile: PromptProfile | None = None) -> tuple[list[int], list[int], int]:
    """``(token_ids, action_mask, prompt_length)`` of ``traj`` laid out with ``tokenizer``, in
    ``profile`` (default: the one the trajectory records, :func:`trajectory_profile`).

    Raises :class:`~s3core.errors.InvalidArgument` when the trajectory has no block 0, no turn, more
    turns than ``cfg.max_turns + 1``, a turn after the episode ended, or blocks that do not match
    its query turns.
    """
    if not traj.blocks:
        raise InvalidArgument(f"trajectory of question {traj.question.id!r} has no block 0 (the naive-RAG block)")
    if not traj.turns:
        raise InvalidArgument(f"trajectory of question {traj.question.id!r} has no turn")
    if len(traj.turns) > cfg.max_turns + 1:
        raise InvalidArgument(
            f"trajectory of question {traj.question.id!r} has {len(traj.turns)} turns, more than "
            f"search.max_turns + 1 = {cfg.max_turns + 1}: it was recorded with other search settings")
    prof = profile if profile is not None else trajectory_profile(traj)
    render_block, block_observation, feedback_observation = (prof.render_block, prof.block_observation,
                                                             prof.feedback_observation)
    select_max = min(cfg.select_max, prof.select_max) if prof.select_max is not None else cfg.select_max
    text0 = render_block(0, "", traj.blocks[0].docs, tokenizer, cfg.max_obs_tokens)
    msgs = prof.searcher_messages(traj.question.question, text0, select_max=select_max, max_turns=cfg.max_turns)
    prompt = prompt_token_ids(tokenizer, msgs)
    ids = list(prompt)
    mask = [0] * len(prompt)
    next_block = 1
    last = len(traj.turns) - 1
    for t, turn in enumerate(traj.turns):
        action = encode(tokenizer, turn.raw_text)
        ids.extend(action)
        mask.extend([1] * len(action))
        if t == last:
            break
        if turn.search_complete or t == cfg.max_turns:
            raise InvalidArgument(f"trajectory of question {traj.question.id!r}: turn {t + 1} ended the episode "
                                  f"but {last - t} more turn(s) follow")
        final_next = t + 1 == cfg.max_turns
        if turn.query is not None:
            if next_block >= len(traj.blocks):
                raise InvalidArgument(f"trajectory of question {traj.question.id!r}: turn {t + 1} searched but "
                                      f"there is no block {next_block}")
            block = traj.blocks[next_block]
            text = render_block(next_block, block.query, block.docs, tokenizer, cfg.max_obs_tokens)
            obs = block_observation(text, final_next=final_next)
            next_block += 1
        else:
            obs = feedback_observation(final_next=final_next)
        obs_ids = encode(tokenizer, obs)
        ids.extend(obs_ids)
        mask.extend([0] * len(obs_ids))
    if next_block != len(traj.blocks):
        raise InvalidArgument(f"trajectory of question {traj.question.id!r} has {len(traj.blocks)} blocks but "
                              f"{next_block - 1} searching turn(s)")
    if not any(mask):
        raise InvalidArgument(f"trajectory of question {traj.question.id!r} has no action token (every turn is empty)")
    return ids, mask, len(prompt)


def replay_trajectory(traj: Trajectory, tokenizer: Any, cfg: SearchConfig,
                      profile: PromptProfile | None = None) -> Trajectory:
    """A copy of ``traj`` whose ``token_ids`` / ``action_mask`` / ``prompt_length`` are :func:`replay_tokens`'
    (and whose ``prompt_profile`` names the profile it was laid out in)."""
    import dataclasses

    prof = profile if profile is not None else trajectory_profile(traj)
    ids, mask, plen = replay_tokens(traj, tokenizer, cfg, prof)
    return dataclasses.replace(traj, token_ids=ids, action_mask=mask, prompt_length=plen, prompt_profile=prof.tag)
