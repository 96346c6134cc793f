"""The search agent as a service on the embedded default: the searcher's ``POST /search`` (real retriever,
generator and searcher subprocesses on loopback, SmolLM2-135M on hf) and ``s3 infer`` (against the running
searcher, and on its own: world, index and services started for the run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3core.data.io import load_questions

SEARCH = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 32}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("search-world")
    synthesize(root / "data", seed=9, n_questions=6)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    cfg = root / "cfg.yaml"
    cfg.write_text(json.dumps({"search": SEARCH}))
    qfile = root / "data" / "synth_1hop.jsonl"
    return {"root": root, "index": root / "idx", "questions": qfile, "cfg": cfg,
            "first": list(load_questions(qfile))[0]}


@pytest.fixture(scope="module")
def services(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with service_runner("s3_retriever", ["--index", str(world["index"])], tmp_path_factory.mktemp("sr")) as ret, \
            service_runner("s3_generator", ["--config", str(world["cfg"])], tmp_path_factory.mktemp("sg"),
                           timeout=900) as gen, \
            service_runner("s3_searcher", ["--config", str(world["cfg"]), "--retriever", ret.grpc_target,
                                           "--generator", gen.grpc_target, "--threads", "1"],
                           tmp_path_factory.mktemp("ss"), timeout=900) as srch:
        yield {"retriever": ret, "generator": gen, "searcher": srch}


def post(svc: Any, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(svc.http_base + "/search", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=900) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_post_search_returns_the_context(services: Any, world: dict[str, Any]) -> None:
    q = world["first"]
    status, out = post(services["searcher"], {"question": q.question})
    assert status == 200, out
    assert out["question"] == q.question and out["policy_version"] == 0 and out["turns"] >= 1
    assert out["context"] and all(set(d) == {"id", "title", "text"} and d["text"] for d in out["context"])
    assert isinstance(out["queries"], list) and all(isinstance(x, str) and x for x in out["queries"])
    assert "answer" not in out
    status, with_answer = post(services["searcher"], {"question": q.question, "answer": True})
    assert status == 200 and isinstance(with_answer["answer"], str) and with_answer["answer"].strip()
    assert with_answer["context"] == out["context"]  # greedy: the same episode


@pytest.mark.parametrize("body, raw, needle", [
    (None, b"[1, 2]", "JSON object"),
    ({}, None, "question"),
    ({"question": "   "}, None, "question"),
    ({"question": 3}, None, "question"),
    ({"question": "x", "preset": "9-9-9"}, None, "preset"),
    ({"question": "x", "answer": "yes"}, None, "answer"),
    ({"question": "x", "topk": 3}, None, "topk"),
    (None, b"{not json", "not valid JSON"),
])
def test_post_search_bad_input_is_400(services: Any, body: Any, raw: bytes | None, needle: str) -> None:
    status, out = post(services["searcher"], body, raw)
    assert status == 400 and needle in out["error"], out


def test_s3_infer_against_the_running_searcher(services: Any, world: dict[str, Any], tmp_path: Path) -> None:
    s3 = str(Path(sys.executable).with_name("s3"))
    out = tmp_path / "infer"
    res = subprocess.run([s3, "infer", "--questions", str(world["questions"]), "--out", str(out), "--limit", "2",
                          "--searcher", services["searcher"].grpc_target, "--config", str(world["cfg"])],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(x) for x in (out / "contexts.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["context"] and r["policy_version"] == 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 2 and summary["policy_versions"] == [0]


def test_s3_infer_bad_input_names_the_problem(tmp_path: Path) -> None:
    s3 = str(Path(sys.executable).with_name("s3"))
    res = subprocess.run([s3, "infer", "--questions", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"),
                          "--searcher", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "nope.jsonl" in (res.stdout + res.stderr)


def test_s3_infer_on_the_embedded_default(world: dict[str, Any], tmp_path: Path) -> None:
    """Nothing running, no index: the embedded world and index are built, services started and stopped."""
    s3 = str(Path(sys.executable).with_name("s3"))
    res = subprocess.run([s3, "infer", "--questions", str(world["questions"]), "--out", "out", "--limit", "1",
                          "--config", str(world["cfg"])], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={**os.environ, "S3_HOME": str(tmp_path / ".s3")})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / ".s3" / "embedded" / "index-bm25" / "manifest.json").is_file()
    rows = [json.loads(x) for x in (tmp_path / "out" / "contexts.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["context"]
