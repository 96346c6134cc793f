"""Fixtures of the deploy checks: the chart rendered by Helm, cached per set of values."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from deploykit import PROFILES, Rendered, run_renderer


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Rendered]:
    """``render(values_files=(), set_values=None, existing=None)`` -> Rendered (profiles cached)."""
    cache: dict[str, Rendered] = {}
    tmp = tmp_path_factory.mktemp("helm")

    def _render(values_files: list[str] | tuple[str, ...] = (), set_values: dict[str, Any] | None = None,
                existing: list[dict[str, Any]] | None = None) -> Rendered:
        key = json.dumps([list(values_files), set_values, existing], sort_keys=True)
        if key not in cache:
            cache[key] = run_renderer(values_files, set_values, existing, tmp)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def profile_render(render: Callable[..., Rendered]) -> Callable[[str], Rendered]:
    """``profile_render("gpu")``: the three profiles are rendered together on first use (each rendering mostly
    waits on client-go's request rate limit, so they overlap well)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(PROFILES)) as pool:
        done = dict(zip(PROFILES, pool.map(lambda files: render(files), PROFILES.values())))
    return lambda profile: done[profile]

