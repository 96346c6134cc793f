"""Regenerate the generated parts of deploy/helm/s3/values.schema.json (the rest is kept as written):

* every key's ``description``, from its ``# --`` comment in values.yaml (one source for the docs of a value: the
  chart README and ``helm show values`` read the same comment);
* the ``config:`` section, from the platform's own config dataclasses (``s3core.config.Config``: field types,
  ``Literal`` choices as enums, unknown keys rejected, the presets by name, each field's comment as its
  description) -- so ``helm install`` rejects a config key or type that ``s3core.config.load_config`` would.

    .venv/bin/python deploy/helm/schema.py            # rewrite values.schema.json
    .venv/bin/python deploy/helm/schema.py --check    # exit 1 when it is out of date (tests/deploy runs this)
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

CHART = Path(__file__).resolve().parent / "s3"
SCHEMA = CHART / "values.schema.json"
VALUES = CHART / "values.yaml"
# a number written as a string: YAML 1.1 reads 1e-06 (as Helm writes it) as one; s3core.config accepts it
NUMERIC_STRING = r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


# --- descriptions from values.yaml ------------------------------------------------------------------------

def value_comments(text: str) -> dict[tuple[str, ...], str]:
    """{key path: its "# --" comment} of a values.yaml written one key per line (block style)."""
    out: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body.startswith("--"):
                pending = [body[2:].strip()]
            elif pending:
                pending.append(body)
            continue
        m = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not m:
            if not stripped:
                pending = []
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending:
            comment = " ".join(p for p in pending if p)
            comment = re.sub(r"^@schema enum: \[[^\]]*\]\s*", "", comment).strip()
            if comment:
                out[tuple(k for _, k in stack)] = comment
        pending = []
    return out


def add_descriptions(schema: dict[str, Any], comments: dict[tuple[str, ...], str]) -> list[str]:
    """Set each commented key's description; the paths of comments with no schema property (a bug)."""
    missing = []
    for path, comment in sorted(comments.items()):
        node = schema
        for key in path:
            props = node.get("properties")
            if not isinstance(props, dict) or key not in props:
                node = None
                break
            node = props[key]
        if node is None:
            missing.append(".".join(path))
            continue
        node["description"] = comment
    return missing


# --- the config section from s3core.config ----------------------------------------------------------------

def field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing comment} from the dataclass source (``name: type = default  # comment``)."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"^    ([a-z_][a-z0-9_]*): [^#]*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def type_schema(tp: Any) -> dict[str, Any]:
    """JSON schema of what ``s3core.config._coerce`` accepts for a field of type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)  # type: ignore[arg-type]
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (typing.Union, types.UnionType):
        return {}
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return {"type": "array", "items": type_schema(item)}
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        return {"type": "object", "additionalProperties": type_schema(args[1]) if len(args) == 2 else {}}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"oneOf": [{"type": "number"}, {"type": "string", "pattern": NUMERIC_STRING}]}
    if tp is str:
        return {"type": ["string", "number"]}
    return {}


def dataclass_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        s = type_schema(hints[f.name])
        if f.name in comments:
            s = {**s, "description": comments[f.name]}
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    doc = (cls.__doc__ or "").strip().split("\n")[0]
    if doc and not doc.startswith(cls.__name__ + "("):  # dataclasses invent a signature docstring
        out["description"] = doc
    return out


def config_schema() -> dict[str, Any]:
    from s3core.config import PRESETS, Config

    s = dataclass_schema(Config)
    s["properties"] = {"presets": {"type": "array", "items": {"enum": list(PRESETS)},
                                   "description": "presets applied in order under the keys given here "
                                                  f"(s3core.config.PRESETS: {', '.join(PRESETS)})"},
                       **s["properties"]}
    s["description"] = ("The platform config (docs/configuration.md), validated like s3core.config.load_config "
                        "validates it (generated from s3core.config by deploy/helm/schema.py)")
    return s


def generate(schema: dict[str, Any], values_text: str) -> tuple[dict[str, Any], list[str]]:
    out = json.loads(json.dumps(schema))
    missing = add_descriptions(out, value_comments(values_text))
    config = config_schema()
    out["properties"]["config"] = config
    return out, missing


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail when values.schema.json is not what this generates")
    args = p.parse_args(argv)
    current = SCHEMA.read_text()
    new, missing = generate(json.loads(current), VALUES.read_text())
    if missing:
        print("values.yaml comments on keys the schema does not have: " + ", ".join(missing), file=sys.stderr)
        return 1
    text = render(new)
    if args.check:
        if text != current:
            print(f"{SCHEMA} is out of date (values.yaml or s3core/config.py changed): run `make chart-schema`",
                  file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
