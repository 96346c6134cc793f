"""Typed configuration, loaded from YAML.

Every knob is a dataclass field with a default and a docstring-style comment.  Loading rejects
unknown keys and impossible values with a :class:`~s3core.errors.ConfigError` that names the key
path, before any work starts.  Presets name the paper's settings (``8-3-3`` etc.) and the two
deployment profiles (``embedded`` CPU default, ``gpu`` paper setting).
"""

from __future__ import annotations

import dataclasses
import os
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
    threads: int = 0  # search threads in bm25s / faiss (0 = library default)


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
    retriever: str = ""  # address of the retriever service (host:port); required
    retriever_timeout_s: float = 30.0  # deadline of one Search call
    retriever_retries: int = 8  # retries of a Search call that failed with UNAVAILABLE / deadline
    checkpoint_dir: str = ""  # LoadPolicy: relative paths resolve here, and paths must stay inside it
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = ""  # hf backend: cpu, cuda, cuda:1 ("" = cuda when available)
    threads: int = 0  # torch CPU threads of the hf backend (0 = library default)
    tensor_parallel_size: int = 1  # vllm backend
    gpu_memory_utilization: float = 0.85  # vllm backend


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
    state_dir: str = ".s3"  # pid files, logs and caches of the embedded default

    def validate(self) -> "Config":
        self.search.validate("search")
        r = self.retriever
        for name in ("max_k", "max_queries", "max_query_chars"):
            if getattr(r, name) < 1:
                raise ConfigError(f"retriever.{name} must be >= 1, got {getattr(r, name)}")
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
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    return value


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
