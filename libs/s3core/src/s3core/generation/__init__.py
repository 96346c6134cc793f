"""The frozen generator / judge LLM: prompts, backends and the answer / judge helpers.

Backends are imported lazily, so importing this package pulls in neither torch nor vllm::

    gen = make_generator(cfg.generator)          # "hf" | "openai" | "vllm"
    answers = answer(gen, [(question, docs)], max_new_tokens=32)
"""

from __future__ import annotations

import importlib
from typing import Callable

from s3core.config import GeneratorConfig
from s3core.errors import ConfigError
from s3core.generation.base import Completion, Generator, Usage
from s3core.generation.engine import answer, judge
from s3core.generation.prompts import PROMPT_VERSION

__all__ = [
    "BACKENDS",
    "Completion",
    "Generator",
    "PROMPT_VERSION",
    "Usage",
    "answer",
    "judge",
    "make_generator",
]


def _hf(cfg: GeneratorConfig, cache_dir: str | None) -> Generator:
    mod = importlib.import_module("s3core.generation.hf")
    return mod.HFGenerator(
        cfg.model,
        name=cfg.model,
        max_batch_size=cfg.max_batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens,
        dtype=cfg.dtype,
        cache_dir=cache_dir,
    )


def _openai(cfg: GeneratorConfig, cache_dir: str | None) -> Generator:
    mod = importlib.import_module("s3core.generation.openai_backend")
    # The embedded id means "whatever the endpoint serves": ask its /models.
    model = "" if cfg.model.startswith("embedded:") else cfg.model
    return mod.OpenAIGenerator(
        cfg.base_url,
        model,
        api_key=mod.api_key_from_env(cfg.api_key_env),
        max_batch_size=cfg.max_batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens,
    )


def _vllm(cfg: GeneratorConfig, cache_dir: str | None) -> Generator:
    mod = importlib.import_module("s3core.generation.vllm_backend")
    return mod.VLLMGenerator(
        cfg.model,
        name=cfg.model,
        max_batch_size=cfg.max_batch_size,
        max_prompt_tokens=cfg.max_prompt_tokens,
        dtype=cfg.dtype,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        cache_dir=cache_dir,
    )


BACKENDS: dict[str, Callable[[GeneratorConfig, str | None], Generator]] = {
    "hf": _hf,
    "openai": _openai,
    "vllm": _vllm,
}


def make_generator(cfg: GeneratorConfig, *, cache_dir: str | None = None) -> Generator:
    """Build (and load) the generator that ``cfg.backend`` names.

    ``cache_dir`` is where embedded models are converted (default ``$S3_MODEL_CACHE`` or
    ``~/.cache/s3/models``).
    """
    try:
        factory = BACKENDS[cfg.backend]
    except KeyError:
        raise ConfigError(
            f"unknown generator.backend {cfg.backend!r} (known: {', '.join(BACKENDS)})"
        ) from None
    return factory(cfg, cache_dir)
