"""s3core.retrieval.lucene: the Java check (real ``java -version`` output of 8, 17, 21 and 25-ea, the machine's own
java, JAVA_HOME), the missing-pyserini message, Lucene directory detection, stored-document parsing, the
Retriever contract over a searcher, and -- when pyserini and a JDK 21+ are both here -- a real BM25 search."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from s3core.errors import ConfigError, InvalidArgument, NotFound
from s3core.retrieval import IndexInfo, Retriever, lucene
from s3core.retrieval.lucene import (
    LuceneRetriever,
    check_java,
    is_lucene_index,
    lucene_manifest,
    open_lucene_index,
    parse_java_version,
    parse_raw,
)

# What `java -version` prints (stderr), copied from real JDKs.
JAVA_8 = """openjdk version "1.8.0_402"
OpenJDK Runtime Environment (Temurin)(build 1.8.0_402-b06)
OpenJDK 64-Bit Server VM (Temurin)(build 25.402-b06, mixed mode)
"""
ORACLE_8 = """java version "1.8.0_401"
Java(TM) SE Runtime Environment (build 1.8.0_401-b10)
Java HotSpot(TM) 64-Bit Server VM (build 25.401-b10, mixed mode)
"""
JAVA_17 = """openjdk version "17.0.15" 2025-04-15
OpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)
OpenJDK 64-Bit Server VM (build 17.0.15+6-Debian-1deb12u1, mixed mode, sharing)
"""
JAVA_21 = """openjdk version "21.0.5" 2024-10-15 LTS
OpenJDK Runtime Environment Temurin-21.0.5+11 (build 21.0.5+11-LTS)
OpenJDK 64-Bit Server VM Temurin-21.0.5+11 (build 21.0.5+11-LTS, mixed mode, sharing)
"""
JAVA_21_GA = """openjdk version "21" 2023-09-19
OpenJDK Runtime Environment (build 21+35-2513)
OpenJDK 64-Bit Server VM (build 21+35-2513, mixed mode, sharing)
"""
JAVA_25_EA = """openjdk version "25-ea" 2025-09-16
OpenJDK Runtime Environment (build 25-ea+27-3363)
OpenJDK 64-Bit Server VM (build 25-ea+27-3363, mixed mode, sharing)
"""
WITH_TOOL_OPTIONS = "Picked up JAVA_TOOL_OPTIONS: -Dfile.encoding=UTF-8\n" + JAVA_21


@pytest.mark.parametrize(("output", "major", "version"), [
    (JAVA_8, 8, "1.8.0_402"),
    (ORACLE_8, 8, "1.8.0_401"),
    (JAVA_17, 17, "17.0.15"),
    (JAVA_21, 21, "21.0.5"),
    (JAVA_21_GA, 21, "21"),
    (JAVA_25_EA, 25, "25-ea"),
    (WITH_TOOL_OPTIONS, 21, "21.0.5"),
    ("openjdk 21.0.2 2024-01-16\nOpenJDK Runtime Environment (build 21.0.2+13-58)\n", 21, "21.0.2"),  # --version
])
def test_java_version_parser(output: str, major: int, version: str) -> None:
    assert parse_java_version(output) == (major, version)


@pytest.mark.parametrize("output", ["", "bash: java: command not found", 'openjdk version "ea" 2025'])
def test_java_version_parser_gives_none_for_anything_else(output: str) -> None:
    assert parse_java_version(output) is None


def _fake_jdk(root: Path, output: str) -> Path:
    """A JAVA_HOME whose bin/java prints ``output`` on stderr, as java does."""
    (root / "bin").mkdir(parents=True)
    (root / "version.txt").write_text(output)
    exe = root / "bin" / "java"
    exe.write_text(f"#!/bin/sh\ncat '{root / 'version.txt'}' >&2\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def test_the_machines_own_java_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The java on PATH (JAVA_HOME unset), run for real: 17 on the CI machines -> the one-line error."""
    monkeypatch.delenv("JAVA_HOME", raising=False)
    java = shutil.which("java")
    if java is None:
        with pytest.raises(ConfigError, match=r"^pyserini needs Java >= 21; no java on PATH and JAVA_HOME is not set"):
            check_java()
        return
    proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    parsed = parse_java_version(proc.stderr + proc.stdout)
    assert parsed is not None, f"cannot parse {java} -version: {proc.stderr!r}"
    if parsed[0] >= 21:
        info = check_java()
        assert info.major == parsed[0] and info.path == java
        return
    with pytest.raises(ConfigError) as err:
        check_java()
    message = str(err.value)
    assert message == f"pyserini needs Java >= 21; found Java {parsed[0]} at {java} (set JAVA_HOME to a JDK 21+)"
    assert "\n" not in message


def test_java_home_wins_over_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jdk21 = _fake_jdk(tmp_path / "jdk-21", JAVA_21)
    monkeypatch.setenv("JAVA_HOME", str(jdk21))
    info = check_java()
    assert (info.major, info.version, info.path) == (21, "21.0.5", str(jdk21 / "bin" / "java"))
    jdk25 = _fake_jdk(tmp_path / "jdk-25", JAVA_25_EA)
    monkeypatch.setenv("JAVA_HOME", str(jdk25))
    assert check_java().major == 25
    jdk8 = _fake_jdk(tmp_path / "jdk-8", JAVA_8)
    monkeypatch.setenv("JAVA_HOME", str(jdk8))
    with pytest.raises(ConfigError, match=r"^pyserini needs Java >= 21; found Java 8 at .*jdk-8/bin/java "
                                          r"\(set JAVA_HOME to a JDK 21\+\)$"):
        check_java()


def test_java_home_without_java_and_unreadable_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"^pyserini needs Java >= 21; JAVA_HOME=.*empty has no bin/java"):
        check_java()
    odd = _fake_jdk(tmp_path / "odd", "Error: could not create the Java Virtual Machine.\n")
    monkeypatch.setenv("JAVA_HOME", str(odd))
    with pytest.raises(ConfigError, match=r"cannot read the version of .*odd/bin/java from `java -version` "
                                          r"\(Error: could not create the Java Virtual Machine.\)"):
        check_java()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no java on PATH and JAVA_HOME is not set"):
        check_java()


@pytest.mark.skipif(importlib.util.find_spec("pyserini") is not None, reason="pyserini is installed here")
def test_missing_pyserini_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Java is fine (a JDK 21 on JAVA_HOME), pyserini is not installed: one line naming the extra."""
    monkeypatch.setenv("JAVA_HOME", str(_fake_jdk(tmp_path / "jdk-21", JAVA_21)))
    index = tmp_path / "idx"
    index.mkdir()
    (index / "segments_1").write_bytes(b"\x3f\xd7\x6c\x17")
    with pytest.raises(ConfigError) as err:
        open_lucene_index(index)
    assert str(err.value) == ("the lucene index backend needs pyserini, which is not installed: "
                              "pip install 's3core[pyserini]' (and a JDK 21+)")
    with pytest.raises(ConfigError, match=r"pip install 's3core\[pyserini\]'"):
        lucene_manifest(index)
    # the prebuilt name takes the same checks before anything is downloaded
    with pytest.raises(ConfigError, match="needs pyserini"):
        open_lucene_index("lucene:wikipedia-dpr-100w")


def test_java_is_checked_before_pyserini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_jdk(tmp_path / "jdk-17", JAVA_17)))
    with pytest.raises(ConfigError, match=r"^pyserini needs Java >= 21; found Java 17 at "):
        open_lucene_index(lucene.PREBUILT_WIKI18)


def test_lucene_directories_are_detected(tmp_path: Path) -> None:
    idx = tmp_path / "lucene"
    idx.mkdir()
    assert not is_lucene_index(idx)
    (idx / "write.lock").write_text("")
    (idx / "_0.cfs").write_bytes(b"x")
    assert not is_lucene_index(idx)
    (idx / "segments_a").write_bytes(b"commit")
    assert is_lucene_index(idx) and is_lucene_index(f"lucene:{idx}") and is_lucene_index(str(idx))
    assert not is_lucene_index(idx / "segments_a")  # a file
    assert not is_lucene_index(tmp_path / "nope")
    (tmp_path / "manifest-index").mkdir()
    (tmp_path / "manifest-index" / "manifest.json").write_text("{}")
    assert not is_lucene_index(tmp_path / "manifest-index")
    # not an index / missing: clear errors before Java or pyserini are looked at
    with pytest.raises(InvalidArgument, match="not a Lucene index directory"):
        open_lucene_index(tmp_path / "manifest-index")
    with pytest.raises(NotFound, match="does not exist"):
        open_lucene_index(tmp_path / "missing")
    with pytest.raises(InvalidArgument, match="no Lucene index given"):
        open_lucene_index("lucene:")


def test_manifest_of_a_lucene_directory(tmp_path: Path) -> None:
    idx = tmp_path / "wiki18-lucene"
    idx.mkdir()
    (idx / "segments_2").write_bytes(b"commit-point")
    m = lucene_manifest(idx, check=False)
    assert m["backend"] == "lucene" and m["name"] == "wiki18-lucene" and m["format_version"] == 1
    assert set(m) >= {"format_version", "name", "backend", "corpus_sha256", "num_documents", "params"}
    copy = tmp_path / "copy"
    shutil.copytree(idx, copy)
    assert lucene_manifest(copy, check=False)["corpus_sha256"] == m["corpus_sha256"]  # same commit, same key
    (copy / "segments_2").write_bytes(b"another commit")
    assert lucene_manifest(copy, check=False)["corpus_sha256"] != m["corpus_sha256"]
    prebuilt = lucene_manifest("lucene:wikipedia-dpr-100w", check=False)
    assert prebuilt["name"] == "wikipedia-dpr-100w" and prebuilt["params"]["prebuilt"] == "wikipedia-dpr-100w"


@pytest.mark.parametrize(("raw", "contents", "expected"), [
    # wiki-18 / DPR: the title on the first line, in quotes or not
    (json.dumps({"id": "1", "contents": '"Aaron"\nAaron is a prophet.'}), None, ("Aaron", "Aaron is a prophet.")),
    (json.dumps({"id": "1", "contents": "Aaron\nAaron is a prophet."}), None, ("Aaron", "Aaron is a prophet.")),
    (json.dumps({"id": "7", "title": "Paris", "text": "Paris is in France.", "contents": "x"}), None,
     ("Paris", "Paris is in France.")),
    ('"Danube"\nThe Danube flows east.', None, ("Danube", "The Danube flows east.")),  # raw not JSON
    (None, '"Jupiter"\nThe fifth planet.', ("Jupiter", "The fifth planet.")),  # no raw stored
    (json.dumps({"id": "3", "contents": "A single line of text."}), None, ("", "A single line of text.")),
])
def test_stored_documents_become_title_and_text(raw: str | None, contents: str | None,
                                                expected: tuple[str, str]) -> None:
    assert parse_raw(raw, contents) == expected


# --- the Retriever contract over a searcher shaped like pyserini's ------------------------------------------

class _StoredDoc:
    def __init__(self, raw: str) -> None:
        self._raw = raw

    def raw(self) -> str:
        return self._raw

    def contents(self) -> str:
        return ""


class _Searcher:
    """LuceneSearcher's surface: search, batch_search, doc, num_docs, close (the scores are word counts)."""

    def __init__(self, docs: dict[str, str]) -> None:
        self.docs = docs
        self.num_docs = len(docs)
        self.closed = False
        self.batches = 0

    def _hits(self, q: str, k: int) -> list[Any]:
        words = q.lower().split()
        scored = []
        for docid, raw in self.docs.items():
            s = float(sum(raw.lower().count(w) for w in words))
            if s > 0:
                scored.append(SimpleNamespace(docid=docid, score=s, raw=raw))
        return sorted(scored, key=lambda h: (-h.score, h.docid))[:k]

    def search(self, q: str, k: int = 10) -> list[Any]:
        return self._hits(q, k)

    def batch_search(self, queries: list[str], qids: list[str], k: int = 10, threads: int = 1) -> dict[str, Any]:
        self.batches += 1
        return {qid: self._hits(q, k) for q, qid in zip(queries, qids)}

    def doc(self, docid: str) -> _StoredDoc | None:
        return _StoredDoc(self.docs[docid]) if docid in self.docs else None

    def close(self) -> None:
        self.closed = True


DOCS = {
    "1": json.dumps({"id": "1", "contents": '"Aaron"\nAaron was a prophet, the brother of Moses.'}),
    "2": json.dumps({"id": "2", "contents": '"Moses"\nMoses led the Israelites; Moses is a prophet.'}),
    "3": json.dumps({"id": "3", "contents": '"Paris"\nParis is the capital of France.'}),
}


def _retriever(threads: int = 0) -> tuple[LuceneRetriever, _Searcher]:
    s = _Searcher(DOCS)
    info = IndexInfo(name="tiny", backend="lucene", num_documents=3, corpus_sha256="0" * 64, params={"k1": 0.9})
    return LuceneRetriever(s, info, threads=threads), s


def test_retriever_contract() -> None:
    r, s = _retriever()
    assert isinstance(r, Retriever) and r.info().backend == "lucene"
    (hits,) = r.search(["moses prophet"], 10)  # k clamped to the corpus; only matching documents
    assert [d.id for d in hits] == ["2", "1"] and hits[0].title == "Moses" and hits[0].text.startswith("Moses led")
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert r.search([], 3) == []
    with pytest.raises(InvalidArgument):
        r.search(["x"], 0)
    with pytest.raises(InvalidArgument):
        r.search("moses", 3)  # type: ignore[arg-type]
    docs = r.get(["3", "1"])
    assert [(d.id, d.title) for d in docs] == [("3", "Paris"), ("1", "Aaron")] and docs[0].score == 0.0
    with pytest.raises(NotFound, match="'9'"):
        r.get(["1", "9"])
    r.close()
    assert s.closed


def test_batches_go_to_javas_thread_pool() -> None:
    r, s = _retriever(threads=4)
    out = r.search(["paris", "aaron", "nothing-matches"], 2)
    assert s.batches == 1
    assert [[d.id for d in hits] for hits in out] == [["3"], ["1"], []]


# --- the real thing, where it can run ------------------------------------------------------------------------

def _real_java_ok() -> str:
    try:
        check_java()
    except ConfigError as exc:
        return str(exc)
    return ""


@pytest.mark.skipif(importlib.util.find_spec("pyserini") is None, reason="pyserini is not installed (optional extra)")
def test_real_lucene_search(tmp_path: Path) -> None:
    why = _real_java_ok()
    if why:
        pytest.skip(why)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with (corpus / "docs.jsonl").open("w") as fh:
        for docid, raw in DOCS.items():
            fh.write(json.dumps({"id": docid, "contents": json.loads(raw)["contents"]}) + "\n")
    index = tmp_path / "index"
    env = {**os.environ, "JAVA_HOME": os.environ.get("JAVA_HOME") or lucene._java_home_of(check_java().path)}
    subprocess.run([sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection",
                    "--input", str(corpus), "--index", str(index), "--generator", "DefaultLuceneDocumentGenerator",
                    "--threads", "1", "--storeRaw"], check=True, env=env, capture_output=True, timeout=600)
    assert is_lucene_index(index)
    r = open_lucene_index(index, name="tiny")
    try:
        assert r.info().num_documents == 3 and r.info().name == "tiny"
        (hits,) = r.search(["capital of France"], 2)
        assert hits[0].id == "3" and hits[0].title == "Paris" and hits[0].text == "Paris is the capital of France."
        assert r.get(["1"])[0].title == "Aaron"
    finally:
        r.close()
