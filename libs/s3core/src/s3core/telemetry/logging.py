"""One logging set-up for every process: timestamped lines on stderr."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | None = None) -> None:
    lvl = (level or os.environ.get("S3_LOG_LEVEL", "INFO")).upper()
    logging.basicConfig(
        level=lvl,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
