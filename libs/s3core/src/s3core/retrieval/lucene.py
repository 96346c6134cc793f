"""Lucene BM25 through pyserini (optional extra ``pyserini``): the paper's BM25 rows over Lucene indexes.

The usual index is pyserini's prebuilt wiki-18 (``wikipedia-dpr-100w``: the 21,015,324 DPR 100-word passages of
the December 2018 Wikipedia, the corpus FlashRAG calls wiki-18), or any Lucene index directory built with
``python -m pyserini.index.lucene --storeRaw``.  Nothing here is imported by the rest of s3core; pyserini (and
through it the JVM, via pyjnius) is imported only inside :func:`open_lucene_index`, after two checks that turn the
usual set-up problems into one-line :class:`~s3core.errors.ConfigError` messages:

* Java: ``java -version`` of ``$JAVA_HOME/bin/java`` (or the ``java`` on ``PATH`` when ``JAVA_HOME`` is unset)
  must report a major version >= 21 (pyserini's Anserini jar is built for Java 21);
* pyserini must be installed (``pip install 's3core[pyserini]'``).

Both are ConfigError (an ``InvalidArgument``): they are set-up errors the operator fixes once, like the ``vllm``
backends' missing package -- not ``Unavailable``, which the platform's clients retry as if the condition could
pass by itself.

Stored documents: pyserini keeps each passage's source JSON as the Lucene ``raw`` field.  The DPR / wiki-18
layout is ``{"id": ..., "contents": "<title>\\n<text>"}`` (the title sometimes in double quotes); some indexes
store ``title`` and ``text`` separately.  Both are read back into :class:`~s3core.types.Doc` title and text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3core.data.io import parse_contents
from s3core.errors import ConfigError, InvalidArgument, NotFound
from s3core.retrieval.base import IndexInfo, Retriever, check_k, check_queries
from s3core.types import Doc

__all__ = [
    "LUCENE_PREFIX",
    "MIN_JAVA",
    "PREBUILT_WIKI18",
    "JavaInfo",
    "LuceneRetriever",
    "check_java",
    "find_java",
    "is_lucene_index",
    "java_info",
    "lucene_manifest",
    "open_lucene_index",
    "parse_java_version",
    "parse_raw",
    "require_pyserini",
]

logger = logging.getLogger(__name__)

LUCENE_PREFIX = "lucene:"  # "lucene:wikipedia-dpr-100w" or "lucene:/data/indexes/wiki18-lucene"
PREBUILT_WIKI18 = "wikipedia-dpr-100w"  # pyserini's prebuilt name of the wiki-18 / DPR passage index
MIN_JAVA = 21
DEFAULT_K1, DEFAULT_B = 0.9, 0.4  # LuceneSearcher's defaults (Anserini's BM25 defaults), used by the paper's rows
INSTALL_HINT = "pip install 's3core[pyserini]'"
_SEGMENTS = re.compile(r"^segments_[0-9a-z]+$")  # a Lucene commit point: segments_<generation in base 36>
_JAVA_HINT = f"(set JAVA_HOME to a JDK {MIN_JAVA}+)"


# --- detection ----------------------------------------------------------------------------------------------


def _strip_prefix(path_or_name: str | os.PathLike[str]) -> str:
    s = os.fspath(path_or_name)
    return s[len(LUCENE_PREFIX):] if s.startswith(LUCENE_PREFIX) else s


def _segments_files(d: Path) -> list[Path]:
    try:
        return sorted(c for c in d.iterdir() if c.is_file() and _SEGMENTS.match(c.name))
    except OSError:
        return []


def is_lucene_index(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (optionally ``lucene:``-prefixed) is a directory holding a Lucene commit (``segments_N``).

    Starts nothing and imports nothing: safe to call on any path, e.g. to pick a backend in ``load_index``."""
    d = Path(_strip_prefix(path))
    return d.is_dir() and bool(_segments_files(d))


# --- Java ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JavaInfo:
    """What ``java -version`` said: the executable, its major version (None when unreadable) and version string."""

    path: str
    major: int | None
    version: str = ""
    first_line: str = ""


_VERSION_RE = re.compile(r'\bversion\s+"([^"]+)"')
_BARE_RE = re.compile(r"^(?:openjdk|java)\s+([0-9][^\s]*)", re.MULTILINE)  # `java --version` style: "openjdk 21.0.2"


def parse_java_version(output: str) -> tuple[int, str] | None:
    """``(major, version string)`` from the text ``java -version`` prints (on stderr), or None.

    Handles the legacy ``1.x`` scheme (``"1.8.0_402"`` -> 8) and JEP 223 strings (``"17.0.15"``, ``"21"``,
    ``"25-ea"``); lines such as ``Picked up JAVA_TOOL_OPTIONS: ...`` before the version line are skipped.
    """
    m = _VERSION_RE.search(output) or _BARE_RE.search(output)
    if not m:
        return None
    version = m.group(1)
    parts = re.match(r"^(\d+)(?:\.(\d+))?", version)
    if not parts:
        return None
    major = int(parts.group(1))
    if major == 1 and parts.group(2) is not None:  # 1.8.0_402 -> 8 (the pre-JEP 223 scheme)
        major = int(parts.group(2))
    return major, version


def find_java(env: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """``(path or None, where it came from)``: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set (and nothing else:
    pyjnius loads the JVM under JAVA_HOME, so a java found elsewhere would not be the one used), else ``java``
    on PATH."""
    env = os.environ if env is None else env
    home = env.get("JAVA_HOME", "")
    if home:
        exe = Path(home) / "bin" / "java"
        return (str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None), f"JAVA_HOME={home}"
    return shutil.which("java", path=env.get("PATH")), "PATH"


def java_info(java: str, timeout: float = 30.0) -> JavaInfo:
    """Run ``java -version`` and parse it; ConfigError when the executable does not run."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"pyserini needs Java >= {MIN_JAVA}; {java} did not run ({exc}) {_JAVA_HINT}") from None
    text = (proc.stderr or "") + (proc.stdout or "")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Picked up ")]
    parsed = parse_java_version(text)
    first = lines[0].strip() if lines else ""
    if parsed is None:
        return JavaInfo(java, None, "", first)
    return JavaInfo(java, parsed[0], parsed[1], first)


def check_java(min_major: int = MIN_JAVA, env: Mapping[str, str] | None = None) -> JavaInfo:
    """The Java pyserini will use, if it is new enough; else ConfigError with a one-line message such as
    ``pyserini needs Java >= 21; found Java 17 at /usr/bin/java (set JAVA_HOME to a JDK 21+)``."""
    java, source = find_java(env)
    if java is None:
        if source == "PATH":
            raise ConfigError(f"pyserini needs Java >= {min_major}; no java on PATH and JAVA_HOME is not set "
                              f"{_JAVA_HINT}")
        raise ConfigError(f"pyserini needs Java >= {min_major}; {source} has no bin/java {_JAVA_HINT}")
    info = java_info(java)
    if info.major is None:
        raise ConfigError(f"pyserini needs Java >= {min_major}; cannot read the version of {java} from "
                          f"`java -version` ({info.first_line or 'no output'}) {_JAVA_HINT}")
    if info.major < min_major:
        raise ConfigError(f"pyserini needs Java >= {min_major}; found Java {info.major} at {java} {_JAVA_HINT}")
    return info


def _java_home_of(java: str) -> str:
    """``/usr/lib/jvm/x/bin/java`` (through symlinks) -> ``/usr/lib/jvm/x``."""
    return str(Path(os.path.realpath(java)).parent.parent)


# --- pyserini -----------------------------------------------------------------------------------------------


def require_pyserini() -> None:
    """ConfigError (one line) when pyserini is not installed; imports nothing."""
    try:
        found = importlib.util.find_spec("pyserini") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"the lucene index backend needs pyserini, which is not installed: {INSTALL_HINT} "
                          f"(and a JDK {MIN_JAVA}+)")


def _ready_for_pyserini(env: Mapping[str, str] | None = None) -> JavaInfo:
    """Java new enough, pyserini installed, JAVA_HOME pointing at that Java (pyjnius loads the JVM from it)."""
    info = check_java(env=env)
    require_pyserini()
    if env is None and not os.environ.get("JAVA_HOME"):
        os.environ["JAVA_HOME"] = _java_home_of(info.path)
    return info


# --- documents ----------------------------------------------------------------------------------------------


def parse_raw(raw: str | None, contents: str | None = None) -> tuple[str, str]:
    """``(title, text)`` of a stored document.

    ``raw`` is pyserini's stored source: JSON with ``title`` + ``text``, or with ``contents`` in the wiki-18 / DPR
    layout (title on the first line, quotes removed), or plain text.  Without ``raw``, ``contents`` is read in
    the wiki-18 layout."""
    if raw:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            title, text = obj.get("title"), obj.get("text")
            if isinstance(text, str):
                return (title if isinstance(title, str) else ""), text
            if isinstance(obj.get("contents"), str):
                return parse_contents(obj["contents"])
        return parse_contents(raw)
    return parse_contents(contents or "")


def _fingerprint(index_dir: str | None, fallback: str) -> str:
    """A sha256 that names what the index holds, for the baseline cache's index key: the Lucene commit point
    files (``segments_N``: the segment list, with ids unique to this index build), so a copy of the same index
    gives the same value.  Without a directory, the sha256 of ``fallback`` (the prebuilt name)."""
    h = hashlib.sha256()
    files = _segments_files(Path(index_dir)) if index_dir else []
    if not files:
        h.update(f"lucene:{fallback}".encode())
        return h.hexdigest()
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


# --- the retriever ------------------------------------------------------------------------------------------


class LuceneRetriever(Retriever):
    """A pyserini ``LuceneSearcher`` behind the :class:`Retriever` interface.

    Calls into the JVM are serialised by a lock (pyjnius attaches each calling thread); a batch of several
    queries runs in Java's own thread pool (``batch_search``) when ``threads`` > 1.
    """

    def __init__(self, searcher: Any, info: IndexInfo, threads: int = 0) -> None:
        self.searcher = searcher
        self._info = info
        self.threads = max(0, int(threads))
        self.num_docs = int(info.num_documents)
        self._lock = threading.Lock()

    def _doc(self, hit: Any) -> Doc:
        raw = getattr(hit, "raw", None)
        if raw is None:
            stored = self.searcher.doc(hit.docid)
            raw = stored.raw() if stored is not None else None
        title, text = parse_raw(raw, getattr(hit, "contents", None))
        return Doc(id=str(hit.docid), title=title, text=text, score=float(hit.score))

    def search(self, queries: Sequence[str], k: int) -> list[list[Doc]]:
        qs = check_queries(queries)
        k = min(check_k(k), self.num_docs)
        if not qs:
            return []
        if k < 1:
            return [[] for _ in qs]
        with self._lock:
            if len(qs) > 1 and self.threads > 1:
                qids = [str(i) for i in range(len(qs))]
                by_qid = self.searcher.batch_search(qs, qids, k=k, threads=self.threads)
                hits = [by_qid.get(q, []) for q in qids]
            else:
                hits = [self.searcher.search(q, k=k) for q in qs]
            out = [[self._doc(h) for h in hs] for hs in hits]
        for docs in out:  # Lucene ranks by score, then docid: keep the contract explicit
            docs.sort(key=lambda d: -d.score)
        return out

    def get(self, ids: Sequence[str]) -> list[Doc]:
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of strings, not a single string")
        out: list[Doc] = []
        missing: list[str] = []
        with self._lock:
            for i in ids:
                stored = self.searcher.doc(str(i))
                if stored is None:
                    missing.append(str(i))
                    continue
                raw = stored.raw()
                contents = stored.contents() if raw is None else None
                title, text = parse_raw(raw, contents)
                out.append(Doc(id=str(i), title=title, text=text))
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise NotFound(f"no document with id {', '.join(map(repr, missing[:5]))}{more}")
        return out

    def info(self) -> IndexInfo:
        return self._info

    def close(self) -> None:
        close = getattr(self.searcher, "close", None)
        if callable(close):
            with self._lock:
                close()


def _is_local(target: str) -> bool:
    return Path(target).exists() or os.sep in target or target.startswith(".")


def lucene_manifest(path_or_prebuilt_name: str | os.PathLike[str], check: bool = True) -> dict[str, Any]:
    """A manifest-shaped dict (the keys ``read_manifest`` returns) for a Lucene index, without starting the JVM.

    With ``check``, Java and pyserini are checked first (ConfigError), so a retriever fails before binding its
    port.  ``num_documents`` is 0 (unknown until the index is opened); ``corpus_sha256`` is the fingerprint of
    the commit point for a directory."""
    target = _strip_prefix(path_or_prebuilt_name)
    local = _is_local(target)
    if local:
        d = Path(target)
        if not d.exists():
            raise NotFound(f"Lucene index directory {d} does not exist")
        if not is_lucene_index(d):
            raise InvalidArgument(f"{d} is not a Lucene index directory (no segments_N file)")
    if check:
        check_java()
        require_pyserini()
    return {
        "format_version": 1,
        "name": Path(target).name if local else target,
        "backend": "lucene",
        "corpus_path": str(Path(target).resolve()) if local else "",
        "corpus_sha256": _fingerprint(target if local else None, target),
        "num_documents": 0,
        "encoder": "",
        "params": {"k1": DEFAULT_K1, "b": DEFAULT_B, "fields": "contents", **({} if local else {"prebuilt": target})},
    }


def open_lucene_index(path_or_prebuilt_name: str | os.PathLike[str], name: str | None = None, *,
                      k1: float = DEFAULT_K1, b: float = DEFAULT_B, threads: int = 0) -> Retriever:
    """Open a Lucene index directory, or a pyserini prebuilt index by name (e.g. ``wikipedia-dpr-100w``), as a
    :class:`Retriever` with BM25(``k1``, ``b``).  A ``lucene:`` prefix is accepted and dropped.

    A prebuilt name is looked up in pyserini's cache (``$PYSERINI_CACHE``, default ``~/.cache/pyserini``) and
    downloaded there when missing -- which needs network; put it there beforehand where there is none.
    Raises ConfigError (Java < 21 or missing, pyserini missing), NotFound (no such directory or prebuilt index),
    InvalidArgument (a directory that is not a Lucene index, an index pyserini cannot open).
    """
    target = _strip_prefix(path_or_prebuilt_name)
    if not target:
        raise InvalidArgument("no Lucene index given (a directory or a pyserini prebuilt name)")
    local = _is_local(target)
    if local:
        d = Path(target)
        if not d.exists():
            raise NotFound(f"Lucene index directory {d} does not exist")
        if not is_lucene_index(d):
            raise InvalidArgument(f"{d} is not a Lucene index directory (no segments_N file)")
    _ready_for_pyserini()
    from pyserini.search.lucene import LuceneSearcher  # heavy: starts the JVM

    try:
        searcher = LuceneSearcher(str(Path(target))) if local else LuceneSearcher.from_prebuilt_index(target)
    except Exception as exc:  # noqa: BLE001 - Java / download errors arrive as many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if local:
            raise InvalidArgument(f"pyserini cannot open the Lucene index {target}: {first}") from None
        raise NotFound(f"pyserini cannot load the prebuilt index {target!r}: {first} (prebuilt indexes are "
                       f"downloaded into $PYSERINI_CACHE, default ~/.cache/pyserini; without network put the "
                       f"unpacked index there, or pass its directory)") from None
    if searcher is None:  # some pyserini versions print the error and return None for an unknown name
        raise NotFound(f"pyserini has no prebuilt index {target!r} (e.g. {PREBUILT_WIKI18} for wiki-18)")
    searcher.set_bm25(float(k1), float(b))
    index_dir = str(getattr(searcher, "index_dir", "") or (target if local else ""))
    params: dict[str, Any] = {"k1": float(k1), "b": float(b), "fields": "contents"}
    if not local:
        params["prebuilt"] = target
    info = IndexInfo(
        name=name or (Path(target).name if local else target),
        backend="lucene",
        num_documents=int(searcher.num_docs),
        corpus_sha256=_fingerprint(index_dir or None, target),
        encoder="",
        params=params,
    )
    logger.info("opened Lucene index %s (%d documents, BM25 k1=%s b=%s)", target, info.num_documents, k1, b)
    return LuceneRetriever(searcher, info, threads=threads)
