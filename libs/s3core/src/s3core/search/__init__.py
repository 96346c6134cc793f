"""The s3 search loop (spec §2) and the generator context built from it (spec §3).

* :mod:`.parsing` -- one turn's text -> :class:`ParsedAction`
* :mod:`.prompts` -- the searcher prompt, information blocks and feedback text
* :mod:`.trajectory` -- the structured episode record and its protobuf form
* :mod:`.context` -- context assembly and its ablations
* :mod:`.episode` -- the batched lock-step episode engine
* :mod:`.policy_hf` -- a transformers policy (imported on demand: it needs torch)
"""

from s3core.search.context import ABLATIONS, build_context, context_text, dedup_docs
from s3core.search.episode import EpisodeStats, Policy, SearchFn, cut_tokens, run_episodes
from s3core.search.parsing import ParsedAction, parse_turn
from s3core.search.prompts import SEARCHER_PROMPT_VERSION
from s3core.search.trajectory import InfoBlock, Trajectory, Turn

__all__ = [
    "ABLATIONS",
    "EpisodeStats",
    "InfoBlock",
    "ParsedAction",
    "Policy",
    "SEARCHER_PROMPT_VERSION",
    "SearchFn",
    "Trajectory",
    "Turn",
    "build_context",
    "context_text",
    "cut_tokens",
    "dedup_docs",
    "parse_turn",
    "run_episodes",
]
