"""Error details are clipped so the percent-encoded trailer stays under the clients' 8 KiB limit."""

from __future__ import annotations

import urllib.parse

import pytest

from s3core.rpc.server import MAX_DETAILS_BYTES, clip_details

CLIENT_TRAILER_LIMIT = 8 * 1024


@pytest.mark.parametrize("unit", ["a", "é", "中", "💥", "\udcff"])
def test_clipped_details_fit_the_trailer_limit(unit: str) -> None:
    message = "unknown ids: " + unit * 50_000
    clipped = clip_details(message)
    encoded = urllib.parse.quote(clipped.encode("utf-8", errors="replace"), safe="")
    assert len(clipped.encode("utf-8", errors="replace")) <= MAX_DETAILS_BYTES
    assert len(encoded) < CLIENT_TRAILER_LIMIT
    assert clipped.startswith("unknown ids: ")
    assert clipped.endswith(f"({len(message)} characters)")


def test_short_details_pass_unchanged() -> None:
    assert clip_details("no document with id 'x'") == "no document with id 'x'"
    assert clip_details("💥" * 256) == "💥" * 256  # exactly 1 KiB of UTF-8


def test_clip_never_splits_a_character() -> None:
    clipped = clip_details("💥" * 1000)
    head = clipped.split("...")[0]
    assert set(head) == {"💥"}


def test_lone_surrogates_become_encodable() -> None:
    clipped = clip_details("bad path \udcff")
    clipped.encode("utf-8")  # must not raise
    assert clipped == "bad path ?"
