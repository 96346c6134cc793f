"""Typed configuration, loaded from YAML.

Every knob is a dataclass field with a default and a docstring-style comment.  Loading rejects
unknown keys and impossible values with a :class:`~s3core.errors.ConfigError` that names the key
path, before any work starts.  Presets name the paper's settings (``8-3-3`` etc.) and the two
deployment profiles (``embedded`` CPU default, ``gpu`` paper setting).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from s3core.errors import ConfigError

# Embedded-default model identifiers resolved by s3core.generation.models / s3core.retrieval.
EMBEDDED_GENERATOR = "embedded:smollm2-135m-instruct"
EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"


@dataclass
class SearchConfig:
    """The s3 search loop knobs (spec §2)."""

    initial_k: int = 3  # docs of the naive-RAG block shown before the first turn
    retrieve_k: int = 8  # docs returned per searcher query
    select_max: int = 3  # most doc ids selected from one information block
    max_turns: int = 3  # searcher turns that may issue a query (a final no-search turn follows)
    max_new_tokens: int = 500  # per searcher turn
    max_obs_tokens: int = 1400  # an information block is truncated to this many tokens
    temperature_train: float = 0.6
    temperature_eval: float = 0.0

    def validate(self, path: str) -> None:
        for name in ("initial_k", "retrieve_k", "select_max", "max_new_tokens", "max_obs_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turns < 0:
            raise ConfigError(f"{path}.max_turns must be >= 0, got {self.max_turns}")
        for name in ("temperature_train", "temperature_eval"):
            if not 0.0 <= getattr(self, name) <= 5.0:
                raise ConfigError(f"{path}.{name} must be in [0, 5], got {getattr(self, name)}")


@dataclass
class RewardConfig:
    """Reward (spec §5)."""

    mode: Literal["gbr", "gbr_plus_acc", "acc"] = "gbr"
    # What to do when a naive-RAG baseline is missing from the cache: fail loudly or compute it.
    on_missing_baseline: Literal["fail", "compute"] = "fail"


@dataclass
class RetrieverConfig:
    """Retriever service."""

    index: str = ""  # index directory written by `s3 index build`
    host: str = "127.0.0.1"
    port: int = 50051
    http_port: int = 8051  # /metrics, /healthz and the Search-R1 compatible POST /retrieve
    max_k: int = 100  # largest k a request may ask for
    max_queries: int = 1024  # largest batch of queries in one request
    max_query_chars: int = 8192  # longest query accepted
    max_concurrent_rpcs: int = 0  # RPCs in flight beyond it are answered RESOURCE_EXHAUSTED (0 = no limit)
    threads: int = 0  # search threads in bm25s / faiss (0 = library default)
    device: str = ""  # dense: where queries are encoded (cpu, cuda, cuda:1; "" = cuda when available)
    faiss_gpus: int = 0  # dense: 0 = faiss searches in host memory; N = the index split over N local GPUs, -1 = all (faiss-gpu)
    # dynamic batching: concurrent Search requests for one index arriving within this window are
    # coalesced into one backend search (one encoder pass + one faiss search); 0 = off
    batch_window_ms: float = 2.0
    batch_max_queries: int = 512  # most queries in one coalesced search (a bigger request runs alone)


@dataclass
class GeneratorConfig:
    """Generator service (the frozen LLM and the judge)."""

    backend: Literal["hf", "openai", "vllm"] = "hf"
    model: str = EMBEDDED_GENERATOR  # HF folder / hub name, or the embedded default
    base_url: str = ""  # openai backend: e.g. http://vllm:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai backend: env var holding the key
    host: str = "127.0.0.1"
    port: int = 50052
    http_port: int = 8052
    max_new_tokens: int = 32  # short answers (spec §1)
    judge_max_new_tokens: int = 8
    max_batch_size: int = 8  # items generated together in one forward batch
    max_items: int = 512  # largest number of items in one request
    max_prompt_tokens: int = 3072  # longer prompts are truncated from the documents' end
    max_concurrent_rpcs: int = 0  # RPCs in flight beyond it are answered RESOURCE_EXHAUSTED (0 = no limit)
    judge: Literal["model", "none"] = "model"  # GenAcc: span match, else the judge ("none" = span only)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tensor_parallel_size: int = 1  # vllm backend
    gpu_memory_utilization: float = 0.85  # vllm backend


@dataclass
class SearcherConfig:
    """Searcher service (the s3 search policy running episodes, spec §2)."""

    backend: Literal["hf", "openai", "vllm"] = "hf"
    model: str = EMBEDDED_GENERATOR  # HF folder / hub name, or the embedded default; openai: the served model name
    tokenizer: str = ""  # openai backend: HF tokenizer used to re-tokenise text ("" = same as model)
    base_url: str = ""  # openai backend: e.g. http://vllm:8000/v1 (chat/completions)
    api_key_env: str = "OPENAI_API_KEY"  # openai backend: env var holding the key
    host: str = "127.0.0.1"
    port: int = 50053
    http_port: int = 8053
    max_batch_size: int = 16  # sequences in one forward batch (hf) / concurrent requests (openai)
    max_questions: int = 256  # largest number of questions in one Rollout request
    max_concurrent_rpcs: int = 0  # RPCs in flight beyond it are answered RESOURCE_EXHAUSTED (0 = no limit)
    retriever: str = ""  # address of the retriever service (host:port); required
    retriever_timeout_s: float = 30.0  # deadline of one Search call
    retriever_retries: int = 8  # retries of a Search call that failed with UNAVAILABLE / deadline
    checkpoint_dir: str = ""  # LoadPolicy: relative paths resolve here, and paths must stay inside it
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = ""  # hf backend: cpu, cuda, cuda:1 ("" = cuda when available)
    threads: int = 0  # torch CPU threads of the hf backend (0 = library default)
    tensor_parallel_size: int = 1  # vllm backend
    gpu_memory_utilization: float = 0.85  # vllm backend
    prompt_profile: Literal["s3-platform", "reference-layout"] = "s3-platform"  # episode layout: ours, or that of the s3 authors' checkpoints
    prompt_profile_mismatch: Literal["warn", "refuse"] = "warn"  # policy folder trained under another profile: warn or refuse


@dataclass
class RLConfig:
    """The RL update of the searcher (spec §6): PPO with a critic, or GRPO.  Defaults: the paper."""

    algorithm: Literal["ppo", "grpo"] = "ppo"
    actor_lr: float = 1e-6
    critic_lr: float = 1e-5  # ppo only
    critic_model: str = ""  # ppo: model the critic starts from ("" = the policy's initial weights)
    gamma: float = 1.0  # GAE discount (ppo)
    lam: float = 1.0  # GAE lambda (ppo)
    clip_ratio: float = 0.2  # PPO/GRPO policy ratio clip
    value_clip: float = 0.2  # critic value clip around the old values (0 = off)
    kl_coef: float = 0.001  # KL to the frozen reference policy (0 = no reference model at all)
    kl_mode: Literal["reward", "loss"] = "reward"  # a per-token reward penalty, or a loss term
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"  # k3 = the low-variance estimator (for kl_mode loss)
    entropy_coef: float = 0.0
    group_size: int = 5  # grpo: trajectories per question
    grpo_norm_std: bool = True  # grpo: divide the group-centred reward by the group's std
    ppo_epochs: int = 1  # passes over one batch of trajectories
    mini_batch_size: int = 0  # trajectories per optimiser step (0 = the whole batch: one step)
    micro_batch_size: int = 4  # trajectories per forward/backward (gradient accumulation)
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up, in optimiser steps
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warm-up
    total_steps: int = 0  # schedule length for linear/cosine (0 = train.steps)
    lora_rank: int = 0  # > 0: train LoRA adapters (peft) instead of all weights
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # > 0: train only the top N decoder layers (and the final norm); the rest, embeddings and LM head stay
    # frozen, so the backward pass stops N layers down (a CPU-sized update); with LoRA, adapters only there
    train_top_layers: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; bfloat16: on CPU too
    device: str = ""  # cpu, cuda, cuda:1 ("" = cuda when available)
    gradient_checkpointing: bool = False
    threads: int = 0  # torch CPU threads (0 = library default)
    seed: int = 0
    # several ranks (Ray Train workers, torchrun): replicate = every rank holds whole models (data parallel);
    # fsdp = policy, critic and reference sharded across the ranks (torch FSDP2; s3core.rl.fsdp)
    strategy: Literal["replicate", "fsdp"] = "replicate"
    micro_batch_tokens: int = 0  # > 0: micro-batches by a budget of padded tokens instead of micro_batch_size rows
    fsdp_cpu_offload: bool = False  # fsdp: sharded parameters, gradients and optimiser state in host memory (CUDA)
    # grpo, DAPO's dynamic sampling: drop the groups whose trajectories all earned the same reward (their
    # advantages are 0: no gradient, only update time) and roll out more questions, up to filter_max_rounds
    # rollouts a step, until train.batch_size informative groups are in hand
    filter_groups: bool = False
    filter_max_rounds: int = 3

    def validate(self, path: str) -> None:
        if self.strategy not in ("replicate", "fsdp"):
            raise ConfigError(f"{path}.strategy must be replicate or fsdp, got {self.strategy!r}")
        if self.micro_batch_tokens < 0:
            raise ConfigError(f"{path}.micro_batch_tokens must be >= 0, got {self.micro_batch_tokens}")
        if self.filter_max_rounds < 1:
            raise ConfigError(f"{path}.filter_max_rounds must be >= 1, got {self.filter_max_rounds}")
        if self.filter_groups and self.algorithm != "grpo":
            raise ConfigError(f"{path}.filter_groups needs {path}.algorithm: grpo (it filters GRPO groups)")
        if self.fsdp_cpu_offload and self.strategy != "fsdp":
            raise ConfigError(f"{path}.fsdp_cpu_offload needs {path}.strategy: fsdp")
        for name in ("actor_lr", "critic_lr"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{path}.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{path}.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.clip_ratio < 1.0:
            raise ConfigError(f"{path}.clip_ratio must be in (0, 1), got {self.clip_ratio}")
        for name in ("value_clip", "kl_coef", "entropy_coef", "max_grad_norm", "weight_decay", "lora_dropout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(self, name)}")
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ConfigError(f"{path}.group_size must be >= 2 for grpo (advantages are group-relative), "
                              f"got {self.group_size}")
        for name in ("ppo_epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mini_batch_size", "warmup_steps", "total_steps", "lora_rank", "threads", "train_top_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(self, name)}")
        if self.lora_rank and self.lora_alpha < 1:
            raise ConfigError(f"{path}.lora_alpha must be >= 1, got {self.lora_alpha}")
        if not isinstance(self.lora_target_modules, list) or not all(
                isinstance(m, str) and m for m in self.lora_target_modules):
            raise ConfigError(f"{path}.lora_target_modules must be a list of module names")


@dataclass
class TrainConfig:
    """A training run (`s3 train`): rollouts -> GBR rewards -> RL update -> publish, repeated."""

    questions: list[str] = field(default_factory=list)  # FlashRAG .jsonl training sets (mixed, shuffled)
    filter: bool = True  # keep only questions naive RAG gets wrong, drop yes/no golds (spec §5)
    steps: int = 20  # RL steps (the paper: 20 x 120 = 2.4k questions)
    batch_size: int = 120  # questions per step
    checkpoint_dir: str = "checkpoints"  # checkpoints and the policy versions published to the searcher
    save_every: int = 1  # steps between checkpoints (the last step is always saved)
    keep_last: int = 3  # checkpoints kept besides the best one
    log_dir: str = ""  # TensorBoard event files ("" = <checkpoint_dir>/tb)
    wandb: bool = False  # also log to Weights & Biases (when installed)
    wandb_project: str = "s3"
    learner: str = ""  # address of a learner service (host:port); "" = update in this process
    searcher: str = ""  # address of the searcher service (host:port); "" = the local stack
    generator: str = ""  # address of the generator service ("" = the local stack)
    retriever: str = ""  # address of the retriever service ("" = the local stack)
    rollout_timeout_s: float = 3600.0
    seed: int = 0
    backend: Literal["local", "ray"] = "local"  # ray: data-parallel update through Ray Train
    ray_address: str = ""  # ray backend: cluster address ("" = start a local Ray)
    num_workers: int = 1  # ray backend: data-parallel training workers
    use_gpu: bool = False  # ray backend: one GPU per worker
    # validation: the served policy at search.temperature_eval on held-out questions (never filtered)
    val_questions: list[str] = field(default_factory=list)  # FlashRAG files; must not share a question with training
    val_every: int = 0  # validate after every N steps (0 = only before / after training, as set below)
    val_before_train: bool = False  # validate the initial policy (step 0) before the first update
    val_after_train: bool = True  # validate after the last step
    val_limit: int = 0  # first N questions of each validation file (0 = all)
    val_batch_size: int = 64  # validation questions per searcher Rollout call

    def validate(self, path: str) -> None:
        for name in ("steps", "batch_size", "save_every", "num_workers", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ConfigError(f"{path}.keep_last must be >= 1, got {self.keep_last}")
        if not self.rollout_timeout_s > 0:
            raise ConfigError(f"{path}.rollout_timeout_s must be > 0, got {self.rollout_timeout_s}")
        if not isinstance(self.questions, list) or not all(isinstance(q, str) and q for q in self.questions):
            raise ConfigError(f"{path}.questions must be a list of .jsonl paths")
        if not self.checkpoint_dir:
            raise ConfigError(f"{path}.checkpoint_dir is empty")
        if not isinstance(self.val_questions, list) or not all(isinstance(q, str) and q for q in self.val_questions):
            raise ConfigError(f"{path}.val_questions must be a list of question file paths")
        for name in ("val_every", "val_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SFTConfig:
    """Supervised warm start of the searcher (`s3 sft`): NLL of teacher actions, RL's masks."""

    trajectories: list[str] = field(default_factory=list)  # trajectories.jsonl files (`s3 eval --method s3`)
    only_correct: bool = False  # keep only trajectories whose context the generator answered correctly
    epochs: int = 3  # passes over the teacher trajectories
    lr: float = 5e-5  # AdamW learning rate (constant; rl.weight_decay applies)
    batch_size: int = 8  # trajectories per optimiser step
    micro_batch_size: int = 2  # trajectories per forward/backward (gradient accumulation)
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    seed: int = 0  # shuffling of the trajectories, epoch by epoch
    out: str = "runs/sft"  # sft_metrics.jsonl, teacher_trajectories.jsonl and the policy/ folder
    max_examples: int = 0  # most trajectories trained on, a seeded sample (0 = all)

    def validate(self, path: str) -> None:
        for name in ("epochs", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.lr < 1.0:
            raise ConfigError(f"{path}.lr must be in (0, 1), got {self.lr}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"{path}.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.max_examples < 0:
            raise ConfigError(f"{path}.max_examples must be >= 0 (0 = all), got {self.max_examples}")
        if not isinstance(self.trajectories, list) or not all(isinstance(t, str) and t for t in self.trajectories):
            raise ConfigError(f"{path}.trajectories must be a list of .jsonl paths")
        if not self.out:
            raise ConfigError(f"{path}.out is empty")


@dataclass
class LearnerConfig:
    """Learner service (PPO/GRPO updates, checkpoints, weight sync)."""

    model: str = ""  # policy to train: HF folder, hub name or embedded name ("" = searcher.model)
    host: str = "127.0.0.1"
    port: int = 50054
    http_port: int = 8054
    max_trajectories: int = 4096  # largest Update request
    max_tokens: int = 32768  # longest trajectory accepted by Update
    max_concurrent_rpcs: int = 0  # RPCs in flight beyond it are answered RESOURCE_EXHAUSTED (0 = no limit)


@dataclass
class RedisConfig:
    url: str = ""  # redis://host:port/db; empty = the local one started by `s3 up`
    port: int = 6390  # port of the local redis-server that `s3 up` starts


@dataclass
class EvalConfig:
    """`s3 eval`."""

    k: int = 3  # naive-RAG top-k
    batch_size: int = 8  # questions per generator request
    limit: int = 0  # questions per dataset (0 = all)


@dataclass
class Config:
    """The whole platform configuration."""

    search: SearchConfig = field(default_factory=SearchConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    searcher: SearcherConfig = field(default_factory=SearcherConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    state_dir: str = ".s3"  # pid files, logs and caches of the embedded default

    def validate(self) -> "Config":
        self.search.validate("search")
        for svc in ("retriever", "generator", "searcher", "learner"):
            if getattr(self, svc).max_concurrent_rpcs < 0:
                raise ConfigError(f"{svc}.max_concurrent_rpcs must be >= 0 (0 = no limit), "
                                  f"got {getattr(self, svc).max_concurrent_rpcs}")
        r = self.retriever
        for name in ("max_k", "max_queries", "max_query_chars", "batch_max_queries"):
            if getattr(r, name) < 1:
                raise ConfigError(f"retriever.{name} must be >= 1, got {getattr(r, name)}")
        if not 0.0 <= r.batch_window_ms <= 1000.0:
            raise ConfigError(f"retriever.batch_window_ms must be in [0, 1000] (0 = no batching), got {r.batch_window_ms}")
        if r.faiss_gpus < -1:
            raise ConfigError(f"retriever.faiss_gpus must be -1 (all GPUs), 0 (CPU) or a GPU count, got {r.faiss_gpus}")
        if r.device and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", r.device):
            raise ConfigError(f"retriever.device must be cpu, cuda, cuda:N or mps (or empty), got {r.device!r}")
        for svc in ("retriever", "generator"):
            for p in ("port", "http_port"):
                v = getattr(getattr(self, svc), p)
                if not 0 <= v <= 65535:
                    raise ConfigError(f"{svc}.{p} must be a TCP port (0-65535), got {v}")
        g = self.generator
        for name in ("max_new_tokens", "judge_max_new_tokens", "max_batch_size", "max_items", "max_prompt_tokens"):
            if getattr(g, name) < 1:
                raise ConfigError(f"generator.{name} must be >= 1, got {getattr(g, name)}")
        if g.backend == "openai" and not g.base_url:
            raise ConfigError("generator.base_url is required when generator.backend is 'openai'")
        if not 0.0 < g.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"generator.gpu_memory_utilization must be in (0, 1], got {g.gpu_memory_utilization}")
        sr = self.searcher
        for p in ("port", "http_port"):
            if not 0 <= getattr(sr, p) <= 65535:
                raise ConfigError(f"searcher.{p} must be a TCP port (0-65535), got {getattr(sr, p)}")
        for name in ("max_batch_size", "retriever_retries", "threads"):
            if getattr(sr, name) < 0:
                raise ConfigError(f"searcher.{name} must be >= 0, got {getattr(sr, name)}")
        if sr.max_questions < 1:
            raise ConfigError(f"searcher.max_questions must be >= 1, got {sr.max_questions}")
        if not sr.retriever_timeout_s > 0:
            raise ConfigError(f"searcher.retriever_timeout_s must be > 0, got {sr.retriever_timeout_s}")
        if not sr.model:
            raise ConfigError("searcher.model is empty")
        if sr.backend == "openai" and not sr.base_url:
            raise ConfigError("searcher.base_url is required when searcher.backend is 'openai'")
        if sr.tensor_parallel_size < 1:
            raise ConfigError(f"searcher.tensor_parallel_size must be >= 1, got {sr.tensor_parallel_size}")
        if not 0.0 < sr.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"searcher.gpu_memory_utilization must be in (0, 1], got {sr.gpu_memory_utilization}")
        if self.eval.k < 1:
            raise ConfigError(f"eval.k must be >= 1, got {self.eval.k}")
        if self.eval.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.eval.batch_size}")
        if self.eval.limit < 0:
            raise ConfigError(f"eval.limit must be >= 0, got {self.eval.limit}")
        self.rl.validate("rl")
        self.train.validate("train")
        self.sft.validate("sft")
        for p in ("port", "http_port"):
            if not 0 <= getattr(self.learner, p) <= 65535:
                raise ConfigError(f"learner.{p} must be a TCP port (0-65535), got {getattr(self.learner, p)}")
        for name in ("max_trajectories", "max_tokens"):
            if getattr(self.learner, name) < 1:
                raise ConfigError(f"learner.{name} must be >= 1, got {getattr(self.learner, name)}")
        return self


# --- presets -------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    # the paper's headline setting: retrieve 8, select at most 3, 3 turns
    "8-3-3": {"search": {"retrieve_k": 8, "select_max": 3, "max_turns": 3}},
    "5-3-3": {"search": {"retrieve_k": 5, "select_max": 3, "max_turns": 3}},
    "5-3-4": {"search": {"retrieve_k": 5, "select_max": 3, "max_turns": 4}},
    "3-3-4": {"search": {"retrieve_k": 3, "select_max": 3, "max_turns": 4}},
    "3-3-3": {"search": {"retrieve_k": 3, "select_max": 3, "max_turns": 3}},
    # CPU-only embedded default: small local models.  SmolLM2-135M judges no better than chance
    # (measured: it says yes as often to wrong answers as to right ones), so GenAcc = span match.
    # Searcher turns are capped at 128 new tokens: a 135M policy on 2 CPU cores otherwise spends
    # minutes rambling to the 500-token limit without ever closing a tag.
    "embedded": {
        "generator": {"backend": "hf", "model": EMBEDDED_GENERATOR, "judge": "none"},
        "search": {"max_new_tokens": 128},
        # a few small steps that show the loop on 2 CPU cores; the learning rates are raised from
        # the paper's (1e-6 / 1e-5 over 20 steps of 120 questions) so that 3 steps move the policy
        "train": {"steps": 3, "batch_size": 4, "checkpoint_dir": "runs/train", "keep_last": 2},
        "rl": {"actor_lr": 1e-5, "critic_lr": 1e-4, "micro_batch_size": 2},
    },
    # the paper's GPU setting (spec §6): 14B generator on vLLM
    "gpu": {
        "generator": {
            "backend": "vllm",
            "model": "Qwen/Qwen2.5-14B-Instruct-GPTQ-Int4",
            "max_batch_size": 64,
            "dtype": "auto",
        },
        "search": {"retrieve_k": 8, "select_max": 3, "max_turns": 3},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {k!r}")
            out[k] = _coerce(vt, v, f"{path}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-06 (no dot), as Helm and many tools write it, as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    return value


coerce_value = _coerce  # one typed coercion for every YAML-backed dataclass (config, job specs)


def config_from_dict(data: dict[str, Any] | None, presets: list[str] | None = None) -> Config:
    merged: dict[str, Any] = {}
    for name in presets or []:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
        merged = _merge(merged, PRESETS[name])
    merged = _merge(merged, data or {})
    return _build(Config, merged, "").validate()


def load_config(path: str | os.PathLike[str] | None = None, presets: list[str] | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (optionally with a top-level ``presets: [...]`` list) and overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded
    file_presets = data.pop("presets", []) or []
    if not isinstance(file_presets, list):
        raise ConfigError("presets must be a list of preset names")
    return config_from_dict(_merge(data, overrides or {}), [*file_presets, *(presets or [])])


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
