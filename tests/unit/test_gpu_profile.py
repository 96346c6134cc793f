"""The GPU profile: every config in configs/ loads with the platform's own loader, configs/gpu-paper.yaml is the
paper's serving setting with the training settings of configs/train-paper.yaml, and the Helm GPU values
(deploy/helm/s3/values-gpu.yaml) say the same thing and give each service the GPUs its config needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3core.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
VALUES_GPU = REPO / "deploy" / "helm" / "s3" / "values-gpu.yaml"
GPU = "nvidia.com/gpu"


def _asdict(obj: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(obj).items() if k not in drop}


@pytest.fixture(scope="module")
def paper() -> Config:
    return load_config(REPO / "configs" / "gpu-paper.yaml")


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES_GPU.read_text())


@pytest.fixture(scope="module")
def chart_config(values: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The `config:` block of values-gpu.yaml, loaded as the services load the ConfigMap the chart writes."""
    path = tmp_path_factory.mktemp("chart") / "config.yaml"
    path.write_text(yaml.safe_dump(values["config"]))
    return load_config(path)


def test_there_are_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"gpu-paper.yaml", "train-paper.yaml", "train-grpo-lora.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path: Path) -> None:
    cfg = load_config(path)  # unknown keys and impossible values raise ConfigError naming the key
    for role in ("generator", "searcher"):
        c = getattr(cfg, role)
        if c.backend == "vllm":
            assert c.tensor_parallel_size >= 1 and 0 < c.gpu_memory_utilization <= 0.95, (path.name, role)
    if cfg.rl.lora_rank:
        assert cfg.rl.lora_alpha >= 1


def test_gpu_paper_is_the_papers_serving_setting(paper: Config) -> None:
    g, s = paper.generator, paper.searcher
    assert (g.backend, g.model, g.tensor_parallel_size) == ("vllm", "Qwen/Qwen2.5-14B-Instruct", 2)
    assert (s.backend, s.model, s.tensor_parallel_size) == ("vllm", "Qwen/Qwen2.5-7B-Instruct", 1)
    assert g.dtype == s.dtype == paper.rl.dtype == "bfloat16"
    # the policy the learner trains is the one the searcher serves
    assert paper.learner.model == s.model and s.checkpoint_dir == paper.train.checkpoint_dir
    # LoadPolicy builds the next version's vLLM engine before it drops the old one: both fit on one GPU
    assert 2 * s.gpu_memory_utilization <= 0.9
    assert (paper.search.retrieve_k, paper.search.select_max, paper.search.max_turns) == (8, 3, 3)  # 8-3-3
    assert paper.rl.device == "cuda" and paper.rl.gradient_checkpointing
    assert "e5" in paper.retriever.index


def test_gpu_paper_trains_like_train_paper(paper: Config) -> None:
    """Everything that decides the RL run is train-paper.yaml's; the deliberate difference is how the update
    fits: one 80 GB GPU with LoRA here, full parameters sharded by FSDP over Ray Train GPU workers there (a 7B
    policy and its 7B critic do not fit one 80 GB GPU at full weight; docs/scale-gpu.md)."""
    ref = load_config(REPO / "configs" / "train-paper.yaml")
    placement = ("lora_rank", "lora_alpha", "device", "strategy", "micro_batch_tokens", "fsdp_cpu_offload")
    assert _asdict(paper.rl, placement) == _asdict(ref.rl, placement)
    assert paper.rl.lora_rank > 0 and ref.rl.lora_rank == 0
    assert (ref.rl.strategy, ref.train.backend, ref.train.use_gpu) == ("fsdp", "ray", True)
    assert ref.train.num_workers >= 5  # the 5 x 80 GB row of docs/scale-gpu.md
    workers = ("backend", "num_workers", "use_gpu", "ray_address")
    assert _asdict(paper.train, workers) == _asdict(ref.train, workers)
    assert _asdict(paper.reward) == _asdict(ref.reward)
    assert _asdict(paper.search) == _asdict(ref.search)
    assert paper.searcher.model == ref.searcher.model and paper.learner.model == ref.learner.model
    assert paper.generator.model.startswith("Qwen/Qwen2.5-14B-Instruct")


def test_helm_gpu_values_say_what_gpu_paper_says(paper: Config, chart_config: Config) -> None:
    c = chart_config
    assert _asdict(c.generator) == _asdict(paper.generator)
    assert _asdict(c.searcher, ("checkpoint_dir",)) == _asdict(paper.searcher, ("checkpoint_dir",))
    assert _asdict(c.learner) == _asdict(paper.learner)
    assert (c.retriever.device, c.retriever.faiss_gpus) == (paper.retriever.device, paper.retriever.faiss_gpus)
    assert _asdict(c.rl) == _asdict(paper.rl)
    assert _asdict(c.search) == _asdict(paper.search) and _asdict(c.reward) == _asdict(paper.reward)
    for key in ("steps", "batch_size", "save_every", "keep_last"):
        assert getattr(c.train, key) == getattr(paper.train, key), key


def _gpus(block: dict[str, Any]) -> int:
    limits = block["resources"]["limits"]
    assert block["resources"]["requests"].get(GPU, limits.get(GPU)) == limits.get(GPU), "GPU requests != limits"
    return int(limits.get(GPU, 0))


def test_helm_gpu_values_place_each_service_on_its_gpus(values: dict[str, Any], chart_config: Config) -> None:
    c = chart_config
    # vLLM runs one tensor-parallel rank per GPU of the pod
    assert _gpus(values["generator"]) == c.generator.tensor_parallel_size == 2
    assert _gpus(values["searcher"]) == c.searcher.tensor_parallel_size == 1
    assert _gpus(values["learner"]) == 1 and values["learner"]["device"] == "cuda"
    assert _gpus(values["retriever"]) == 1  # e5 query encoding
    for name in ("generator", "searcher", "learner", "retriever"):
        block = values[name]
        assert block["imageVariant"] == "cuda", name
        assert block["nodeSelector"].get("nvidia.com/gpu.present") == "true", name
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in block["tolerations"], name
    for name in ("generator", "searcher", "learner"):
        assert values[name]["shm"]["enabled"], f"{name}: torch / NCCL need a /dev/shm"
    # the chart's flags (--model) win over the config: they must name the same models
    assert values["generator"]["model"] == c.generator.model and values["generator"]["backend"] == "vllm"
    assert values["searcher"]["model"] == c.searcher.model and values["searcher"]["backend"] == "vllm"
    assert values["learner"]["model"] == c.learner.model
    assert values["retriever"]["shards"] >= 1
