"""Fixtures of the reliability tests: all five services as real subprocesses on loopback.

Small and fast on purpose: a BM25 index over a tiny synthetic world, the tiny Qwen2 test model
(``s3core.rl.tiny``) as the generator, the searcher's policy and the learner's policy, and a real
``redis-server`` under the controller.  Everything is module-scoped per test file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# reuse run_service/Service of tests/integration/conftest.py (loaded by path: both files are "conftest")
_spec = importlib.util.spec_from_file_location(
    "s3_integration_conftest", Path(__file__).resolve().parents[1] / "integration" / "conftest.py")
assert _spec is not None and _spec.loader is not None
_integration = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(_integration, "run_service"):
    _spec.loader.exec_module(_integration)
Service = _integration.Service
run_service = _integration.run_service

# "ci" (the default, inside `make test`): few examples per method, bounded time.  S3_FUZZ_EXAMPLES
# raises it (e.g. 700 per method for the >= 10,000-case run).
settings.register_profile(
    "ci", max_examples=int(os.environ.get("S3_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much], database=None,
)
settings.load_profile(os.environ.get("S3_HYPOTHESIS_PROFILE", "ci"))

__all__ = ["Service", "run_service"]


@pytest.fixture(scope="session")
def service_runner():  # noqa: ANN201 - the run_service context manager
    """``with service_runner("s3_retriever", [...args], workdir) as svc:`` -- a started service."""
    return run_service


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic world, its BM25 index and a tiny model folder."""
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("reliability-world")
    synthesize(root / "data", seed=3, n_entities=40, n_questions=4)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny")
    return {"root": root, "index": root / "idx", "model": root / "tiny"}


def _workdir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="module")
def retriever(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with run_service("s3_retriever", ["--index", str(world["index"]), "--threads", "1"],
                     _workdir(tmp_path_factory, "rel-retriever")) as svc:
        yield svc


@pytest.fixture(scope="module")
def generator(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with run_service("s3_generator", ["--model", str(world["model"])],
                     _workdir(tmp_path_factory, "rel-generator"), timeout=180) as svc:
        yield svc


@pytest.fixture(scope="module")
def searcher(world: dict[str, Any], retriever: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = _workdir(tmp_path_factory, "rel-searcher")
    # small server defaults keep a fuzzed-but-valid rollout ("0 = server default" knobs) short
    (work / "searcher.yaml").write_text("search:\n  max_turns: 1\n  max_new_tokens: 12\n  max_obs_tokens: 256\n")
    args = ["--retriever", retriever.grpc_target, "--model", str(world["model"]), "--threads", "1",
            "--max-batch-size", "8", "--config", str(work / "searcher.yaml")]
    with run_service("s3_searcher", args, work, timeout=180) as svc:
        yield svc


@pytest.fixture(scope="module")
def learner(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = _workdir(tmp_path_factory, "rel-learner")
    args = ["--checkpoint-dir", str(work / "ckpt"), "--model", str(world["model"]), "--algorithm", "grpo",
            "--device", "cpu", "--threads", "1"]
    with run_service("s3_learner", args, work, timeout=180) as svc:
        yield svc


@pytest.fixture(scope="module")
def controller(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = _workdir(tmp_path_factory, "rel-controller")
    args = ["--redis-url", redis_url, "--state-dir", str(work / "state"), "--worker-threads", "1",
            "--reconcile-interval", "0.5"]
    with run_service("s3_controller", args, work, timeout=60) as svc:
        yield svc
