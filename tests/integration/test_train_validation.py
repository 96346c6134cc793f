"""Validation during training, end to end against real services on loopback (a real redis-server, the
retriever over a BM25 index of the synthetic world, a generator and a searcher serving a tiny Qwen2
model, the learner in process or as a service):

* validations run at the configured steps (before training, every N steps, after the last), their
  rows land in ``metrics.jsonl`` (and the summary), ``best.json`` points at a copy of exactly the
  validated policy with the highest held-out GBR, the curve is drawn;
* validation questions shared with the training set are refused, naming the question;
* a resumed run keeps the best record and validates the resumed step again when its validation was
  lost; with the learner service the same holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3core.config import load_config
from s3core.errors import InvalidArgument
from s3core.train.run import TrainJob, run_training

KNOBS = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 12, "max_obs_tokens": 200}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("val-world")
    synthesize(root / "data", seed=5, n_questions=12)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    model = build_tiny_model(root / "tiny", seed=1)
    return {"root": root, "index": root / "idx", "train": root / "data" / "synth_1hop.jsonl",
            "val": root / "data" / "synth_2hop.jsonl", "model": model}


@pytest.fixture(scope="module")
def services(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    model = str(world["model"])
    with service_runner("s3_retriever", ["--index", str(world["index"])], tmp_path_factory.mktemp("ret")) as ret, \
            service_runner("s3_generator", ["--backend", "hf", "--model", model],
                           tmp_path_factory.mktemp("gen")) as gen:
        yield {"retriever": ret.grpc_target, "generator": gen.grpc_target}


@pytest.fixture()
def searcher(world: dict[str, Any], services: dict, service_runner: Any, tmp_path: Path) -> Iterator[str]:
    """A fresh searcher (version 0) per run."""
    (tmp_path / "s").mkdir()
    with service_runner("s3_searcher", ["--retriever", services["retriever"], "--model", str(world["model"]),
                                        "--threads", "1"], tmp_path / "s") as s:
        yield s.grpc_target


def _config(world: dict[str, Any], services: dict, searcher: str, ckdir: Path, **train: Any) -> Any:
    return load_config(overrides={
        "search": KNOBS,
        "generator": {"judge": "none", "max_new_tokens": 8},
        "searcher": {"model": str(world["model"])},
        "reward": {"on_missing_baseline": "compute"},
        "rl": {"actor_lr": 1e-3, "critic_lr": 1e-3, "micro_batch_size": 2, **train.pop("rl", {})},
        "train": {"questions": [str(world["train"])], "filter": False, "batch_size": 2, "checkpoint_dir": str(ckdir),
                  "retriever": services["retriever"], "generator": services["generator"],
                  "searcher": searcher, "val_questions": [str(world["val"])], "val_limit": 4,
                  "keep_last": 1, **train},
    })


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _val_rows(ckdir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (ckdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "validation"]


def _check_best(ckdir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    best = json.loads((ckdir / "best.json").read_text())
    top = max(r["val_gbr"] for r in rows)
    first_top = next(r for r in rows if r["val_gbr"] == top)  # ties keep the earliest
    assert (best["step"], best["version"], best["val_gbr"]) == (first_top["step"], first_top["version"], top)
    assert best["ci95"] == first_top["val_gbr_ci95"]
    assert (Path(best["policy_path"]) / "config.json").is_file()
    return best


def test_validation_in_process_best_and_resume(world: dict[str, Any], services: dict, searcher: str,
                                               redis_url: str, tmp_path: Path) -> None:
    from s3core.data.io import load_questions

    ckdir = tmp_path / "ckpt"
    # a validation set sharing a question with the training set is refused, naming the question
    shared = tmp_path / "dev.jsonl"
    q = load_questions(world["train"])[3]
    shared.write_text(json.dumps({"id": "dev-7", "question": q.question, "golden_answers": ["x"]}) + "\n")
    bad = _config(world, services, searcher, tmp_path / "bad", steps=1, val_questions=[str(world["val"]), str(shared)])
    with pytest.raises(InvalidArgument, match=r"dev-7 .*also in the training set"):
        run_training(TrainJob(config=bad, show_progress=False, redis_url=redis_url, resume=False))

    cfg = _config(world, services, searcher, ckdir, steps=3, val_every=2, val_before_train=True)
    s = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=False))
    rows = _val_rows(ckdir)
    assert [(r["step"], r["version"]) for r in rows] == [(0, 0), (2, 2), (3, 3)]  # before, every 2, after the last
    for r in rows:
        assert r["val_n"] == 4  # val_limit, never filtered by naive-RAG correctness
        assert r["val_gbr"] == pytest.approx(r["val_s3_genacc"] - r["val_naive_genacc"])
        assert r["val_gbr_ci95_lo"] <= r["val_gbr"] <= r["val_gbr_ci95_hi"]
        assert set(r["val_per_dataset"]) == {"synth_2hop"}
    assert [v["step"] for v in s.validations] == [0, 2, 3]
    best = _check_best(ckdir, rows)
    assert s.best == {k: best[k] for k in ("step", "version", "val_gbr", "ci95", "policy_path")}
    # the copy is exactly the policy that was validated: the initial model, or that step's published folder
    src = Path(world["model"]) if best["step"] == 0 else ckdir / f"step-{best['step']:06d}" / "policy"
    assert _digest(Path(best["policy_path"])) == _digest(src)
    assert (ckdir / "val_curve.png").stat().st_size > 1000
    # keep_last=1 pruned the older checkpoints; the best record and its copy survive
    assert sorted(p.name for p in ckdir.glob("step-*")) in (["step-000003"], [f"step-{best['step']:06d}",
                                                                              "step-000003"])
    # the run state of the last checkpoint holds the validations before it
    state = json.loads((ckdir / "step-000003" / "extra.json").read_text())["extra"]["validation"]
    assert [h["step"] for h in state["history"]] == [0, 2]

    # a crash during the final validation: its row never landed; --resume validates step 3 again
    lines = (ckdir / "metrics.jsonl").read_text().splitlines()
    (ckdir / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    again = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=True))
    assert again.start_step == 3 and [v["step"] for v in again.validations] == [0, 2, 3]
    assert [r["step"] for r in _val_rows(ckdir)] == [0, 2, 3]
    assert again.best == s.best  # deterministic at the eval temperature: the same record
    # a finished run has nothing to do and still reports its validations and best
    done = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url, resume=True))
    assert [v["step"] for v in done.validations] == [0, 2, 3] and done.best == s.best


def test_validation_with_learner_service(world: dict[str, Any], services: dict, searcher: str, redis_url: str,
                                         service_runner: Any, tmp_path: Path) -> None:
    ckdir = tmp_path / "ckpt"
    (tmp_path / "l").mkdir()
    with service_runner("s3_learner", ["--checkpoint-dir", str(ckdir), "--model", str(world["model"]),
                                       "--algorithm", "grpo", "--device", "cpu", "--threads", "1"],
                        tmp_path / "l") as learner:
        cfg = _config(world, services, searcher, ckdir, steps=2, val_every=1, learner=learner.grpc_target, save_every=2,
                      rl={"algorithm": "grpo", "group_size": 2})
        s = run_training(TrainJob(config=cfg, show_progress=False, redis_url=redis_url))
    rows = _val_rows(ckdir)
    assert [(r["step"], r["version"]) for r in rows] == [(1, 1), (2, 2)]
    best = _check_best(ckdir, rows)
    assert s.best["step"] == best["step"]
    # step 1 was not checkpointed (save_every 2): its published folder is not kept, the copy is; copies
    # kept: the best, and the best of the validations in the newest checkpoint's run state (step 1's)
    copies = sorted(p.name for p in (ckdir / "best-policies").iterdir())
    assert copies == sorted({f"step-{best['step']:06d}", "step-000001"})
    if best["step"] == 2:
        assert _digest(Path(best["policy_path"])) == _digest(ckdir / "step-000002" / "policy")
