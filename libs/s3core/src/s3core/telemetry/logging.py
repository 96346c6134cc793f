"""One logging set-up for every process: timestamped lines on stderr."""

from __future__ import annotations

import logging
import os

# Libraries that log chatty DEBUG/INFO lines of their own at our level.
_QUIET = ("bm25s", "httpx", "urllib3", "filelock", "sentence_transformers", "transformers", "faiss")


def setup_logging(level: str | None = None) -> None:
    lvl = (level or os.environ.get("S3_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=lvl,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
