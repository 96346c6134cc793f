"""s3core's layer rules, from its own imports: no module imports a package of a higher layer, and only
the wire layer (``s3core.rpc``) touches the generated protobuf code (``s3.v1``).

Every import counts, the ones inside functions too (a lazy import is still a dependency).  The order
below is the one the code has (derived from its imports) and the README's layout table describes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import s3core

ROOT = Path(s3core.__file__).parent

# Lowest first.  A module may import its own layer and any lower one, never a higher one.
LAYERS: list[set[str]] = [
    {"__init__", "types", "jobmodel", "errors", "config", "io", "metrics", "telemetry"},  # foundations
    {"data", "generation"},  # datasets and the synthetic world; LLM backends
    {"retrieval", "search"},  # indexes and shards; the s3 loop, prompts, trajectories (domain types)
    {"rl"},  # PPO / GRPO, checkpoints (over the search policy)
    {"rpc"},  # the wire: proto <-> domain conversion, clients, server bootstrap, error mapping, auth
    {"runtime"},  # the local stack on loopback, redis-server
    {"cache"},  # the baseline cache (Redis)
    {"reward"},  # Gain Beyond RAG over the cache
    {"eval"},  # methods, runner, reports, precompute
    {"train"},  # the RL loop and its learners
    {"jobs"},  # controller state, backends, worker bodies (index, eval, train, ... jobs)
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}

# Modules outside s3core.rpc that touch s3.v1, and why.  Empty: every wire form (trajectories, scored
# trajectories, job records and events) converts in rpc/ (convert.py, convert_learner.py,
# convert_controller.py), every client is in rpc/clients.py.
PROTO_OUTSIDE_RPC: dict[str, str] = {}


def _unit(module: str) -> str | None:
    """The top-level part of s3core a dotted module name belongs to (``s3core.rpc.convert`` -> ``rpc``)."""
    parts = module.split(".")
    if parts[0] != "s3core":
        return None
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "s3core":  # from s3core import metrics
                out += [(node.lineno, f"s3core.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def _modules() -> list[tuple[str, Path]]:
    files = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)
    return [(p.relative_to(ROOT).parts[0].removesuffix(".py"), p) for p in files]


def test_every_package_has_a_layer() -> None:
    units = {u for u, _ in _modules()}
    assert units - set(LEVEL) == set(), "a new s3core package: give it a layer in LAYERS (and the README)"


def test_no_upward_import() -> None:
    bad = []
    for unit, path in _modules():
        for line, module in _imports(path):
            target = _unit(module)
            if target is None or target == unit or target not in LEVEL:
                continue
            if LEVEL[target] > LEVEL[unit]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {unit} (layer {LEVEL[unit]}) imports {module} "
                           f"(layer {LEVEL[target]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_only_rpc_touches_the_protos() -> None:
    bad = []
    for unit, path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if unit == "rpc" or rel in PROTO_OUTSIDE_RPC:
            continue
        for line, module in _imports(path):
            if module == "s3" or module.startswith("s3.") or module.startswith("google.protobuf"):
                bad.append(f"{rel}:{line}: imports {module}")
    assert not bad, "protobuf outside s3core.rpc (convert there):\n" + "\n".join(bad)


def test_no_stale_proto_exception() -> None:
    """An exception names a module that exists and still touches the protos (the list only shrinks)."""
    for rel in PROTO_OUTSIDE_RPC:
        path = ROOT / rel
        assert path.exists(), f"{rel}: listed in PROTO_OUTSIDE_RPC but gone"
        assert any(m == "s3" or m.startswith("s3.") for _, m in _imports(path)), f"{rel}: no longer touches s3.v1"


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    """The walk counts imports inside functions (the rule would be hollow otherwise)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from s3core.jobs import store\n    import s3core.eval.report\n")
    assert [_unit(m) for _, m in _imports(f)] == ["jobs", "eval"]
