"""vLLM engine settings and the vLLM venv lookup (no vllm needed: these run in the main venv)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from s3core.errors import ConfigError
from s3core.generation import vllm_backend as vb


def test_cpu_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("S3_VLLM_MAX_MODEL_LEN", "S3_VLLM_ENFORCE_EAGER", "S3_VLLM_KV_CACHE_GIB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(vb, "_on_cpu", lambda: True)
    kw = vb.engine_kwargs("/m", dtype="float32", seed=3)
    assert kw["model"] == "/m" and kw["dtype"] == "float32" and kw["seed"] == 3
    assert kw["enforce_eager"] is True and kw["kv_cache_memory_bytes"] == 2 << 30
    assert "max_model_len" not in kw


def test_gpu_defaults_and_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vb, "_on_cpu", lambda: False)
    monkeypatch.delenv("S3_VLLM_KV_CACHE_GIB", raising=False)
    monkeypatch.delenv("S3_VLLM_ENFORCE_EAGER", raising=False)
    kw = vb.engine_kwargs("/m", tensor_parallel_size=2, gpu_memory_utilization=0.4)
    assert kw["enforce_eager"] is False and "kv_cache_memory_bytes" not in kw
    assert kw["tensor_parallel_size"] == 2 and kw["gpu_memory_utilization"] == 0.4
    monkeypatch.setenv("S3_VLLM_MAX_MODEL_LEN", "4096")
    monkeypatch.setenv("S3_VLLM_ENFORCE_EAGER", "1")
    monkeypatch.setenv("S3_VLLM_KV_CACHE_GIB", "0.5")
    kw = vb.engine_kwargs("/m")
    assert kw["max_model_len"] == 4096 and kw["enforce_eager"] is True and kw["kv_cache_memory_bytes"] == 1 << 29


@pytest.mark.parametrize("var, value", [("S3_VLLM_MAX_MODEL_LEN", "big"), ("S3_VLLM_KV_CACHE_GIB", "lots")])
def test_bad_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var):
        vb.engine_kwargs("/m")


def test_shape_check(tmp_path: Path) -> None:
    import json

    from s3core.errors import InvalidArgument

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128}))
    engine = object.__new__(vb.VLLMEngine)  # no engine: only the bookkeeping of check_compatible
    engine.model_path, engine._shape = str(tmp_path / "a"), vb._shape_of(str(tmp_path / "a"))
    engine.check_compatible(str(tmp_path / "a"))
    with pytest.raises(InvalidArgument, match="hidden_size 64 -> 128"):
        engine.check_compatible(str(tmp_path / "b"))
    with pytest.raises(InvalidArgument, match="config.json"):
        engine.check_compatible(str(tmp_path))


def test_vllm_python_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("S3_VLLM_PYTHON", str(tmp_path / "nope"))
    assert vb.find_vllm_python() is None
    monkeypatch.setenv("S3_VLLM_PYTHON", sys.executable)
    assert vb.find_vllm_python() == sys.executable
    with pytest.raises(RuntimeError, match="no vllm distribution"):
        vb.describe_vllm_python(sys.executable)  # the main venv has no vllm
