"""Job specs: one typed `job:` mapping per kind, every error naming its field, local path checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from s3core.errors import ConfigError
from s3core.jobs.spec import (
    EvalArgs,
    IndexArgs,
    InferArgs,
    PrecomputeArgs,
    TrainArgs,
    check_local_paths,
    parse_spec,
    validate_labels,
)

EVAL = """
kind: eval
presets: [embedded]
eval: {k: 5}
job:
  questions: [q1.jsonl, q2.jsonl]
  methods: [naive-rag, no-retrieval]
  index: idx
  out: out
run: {max_attempts: 3, timeout_s: 60}
"""


def test_eval_spec_resolves_config_presets_and_args():
    spec = parse_spec(EVAL)
    assert spec.kind == "eval"
    assert isinstance(spec.args, EvalArgs)
    assert spec.args.methods == ["naive-rag", "no-retrieval"]
    assert spec.config.eval.k == 5
    assert spec.config.generator.judge == "none"  # from the embedded preset
    assert spec.run.max_attempts == 3 and spec.run.timeout_s == 60.0
    assert spec.inputs() == {"questions[0]": "q1.jsonl", "questions[1]": "q2.jsonl", "index": "idx"}
    resolved = spec.resolved()
    assert resolved["job"]["out"] == "out" and resolved["config"]["eval"]["k"] == 5
    assert resolved["presets"] == ["embedded"]
    yaml.safe_dump(resolved)  # the run record's spec is plain data


@pytest.mark.parametrize("kind, job, cls", [
    ("index", {"corpus": "c.jsonl", "out": "idx"}, IndexArgs),
    ("precompute", {"questions": ["q.jsonl"], "index": "idx"}, PrecomputeArgs),
    ("infer", {"questions": ["q.jsonl"], "index": "idx", "out": "o"}, InferArgs),
])
def test_every_kind_parses(kind, job, cls):
    spec = parse_spec(yaml.safe_dump({"job": job}), kind)
    assert spec.kind == kind and isinstance(spec.args, cls)


def test_train_spec_uses_the_train_section():
    spec = parse_spec(yaml.safe_dump({"train": {"questions": ["t.jsonl"], "steps": 2}, "rl": {"seed": 7},
                                      "job": {"index": "idx"}}), "train")
    assert isinstance(spec.args, TrainArgs) and spec.args.resume is True
    assert spec.inputs() == {"train.questions[0]": "t.jsonl", "index": "idx"}
    remote = parse_spec("train: {questions: [t.jsonl], retriever: 'r:1', generator: 'g:1'}", "train")
    assert remote.inputs() == {"train.questions[0]": "t.jsonl"}
    with pytest.raises(ConfigError, match="job.index is required"):
        parse_spec("train: {questions: [t.jsonl]}", "train")
    assert spec.seeds()["rl.seed"] == 7


@pytest.mark.parametrize("text, kind, needle", [
    ("job: {}", "", "kind is required"),
    ("kind: eval\n", "index", "kind: the spec says 'eval' but the request says 'index'"),
    ("kind: sleep\n", "", "kind must be one of"),
    ("[1, 2]", "eval", "top level must be a mapping"),
    ("job: {questions: [a]\n", "eval", "invalid YAML"),
    ("jobs: {}", "eval", "unknown top-level key 'jobs'"),
    ("job: {corpus: c, out: o, backend: faiss}", "index", "job.backend must be one of 'bm25', 'dense'"),
    ("job: {corpus: c}", "index", "job.out is required"),
    ("job: {corpus: c, out: o, nope: 1}", "index", "unknown key job.nope"),
    ("job: {corpus: c, out: o, limit: -1}", "index", "job.limit must be >= 0"),
    ("job: {corpus: c, out: o, limit: many}", "index", "job.limit must be an integer"),
    ("job: {questions: q.jsonl, methods: [naive-rag], out: o, index: i}", "eval", "job.questions must be a list"),
    ("job: {questions: [q], methods: [naive-rag, rerank], out: o, index: i}", "eval", "job.methods[1]"),
    ("job: {questions: [q], methods: [naive-rag, naive-rag], out: o, index: i}", "eval", "listed twice"),
    ("job: {questions: [q], methods: [naive-rag], out: o}", "eval", "job.index is required"),
    ("job: {questions: [q], out: o}", "infer", "job.index is required"),
    ("job: {questions: [q], out: o, index: i, n: 0}", "infer", "job.n must be >= 1"),
    ("job: {questions: [q]}", "precompute", "job.index is required"),
    ("train: {questions: []}\njob: {index: i}", "train", "train.questions is empty"),
    ("eval: {k: 0}\njob: {corpus: c, out: o}", "index", "eval.k must be >= 1"),
    ("search: {bogus: 1}\njob: {corpus: c, out: o}", "index", "unknown config key search.bogus"),
    ("presets: [huge]\njob: {corpus: c, out: o}", "index", "unknown preset 'huge'"),
    ("run: {max_attempts: 0}\njob: {corpus: c, out: o}", "index", "run.max_attempts must be in [1, 20]"),
    ("run: {timeout_s: -1}\njob: {corpus: c, out: o}", "index", "run.timeout_s must be >= 0"),
    ("kubernetes: {memory: lots}\njob: {corpus: c, out: o}", "index", "kubernetes.memory is not a Kubernetes quantity"),
    ("kubernetes: {tolerations: [{key: a, effect: Sometimes}]}\njob: {corpus: c, out: o}", "index",
     "kubernetes.tolerations[0].effect"),
    ("kubernetes: {node_selector: {'bad key!': x}}\njob: {corpus: c, out: o}", "index", "kubernetes.node_selector"),
    ("kubernetes: {gpus: -1}\njob: {corpus: c, out: o}", "index", "kubernetes.gpus must be >= 0"),
])
def test_bad_specs_name_the_field(text, kind, needle):
    with pytest.raises(ConfigError) as err:
        parse_spec(text, kind)
    assert needle in str(err.value)


def test_local_paths_resolve_against_the_workdir(tmp_path: Path):
    (tmp_path / "q1.jsonl").write_text("")
    (tmp_path / "idx").mkdir()
    spec = parse_spec("job: {questions: [q1.jsonl, q2.jsonl], methods: [naive-rag], index: idx, out: o}", "eval")
    with pytest.raises(ConfigError, match=r"job.questions\[1\]: no such file: q2.jsonl"):
        check_local_paths(spec, tmp_path)
    (tmp_path / "q2.jsonl").write_text("")
    with pytest.raises(ConfigError, match="job.index: idx is not an index directory"):
        check_local_paths(spec, tmp_path)
    (tmp_path / "idx" / "manifest.json").write_text("{}")
    check_local_paths(spec, tmp_path)
    remote = parse_spec("job: {questions: [q1.jsonl], methods: [naive-rag], retriever: 'r:1', out: o}", "eval")
    check_local_paths(remote, tmp_path)  # a running retriever: no index directory needed


def test_labels_follow_kubernetes_syntax():
    assert validate_labels({"team": "search", "example.com/run": "a-1"}) == {"team": "search", "example.com/run": "a-1"}
    for bad in ({"": "x"}, {"a b": "x"}, {"team": "no spaces"}, {"x" * 64: "y"}, {"s3.dev/job-id": "x"}):
        with pytest.raises(ConfigError, match="labels"):
            validate_labels(bad)


def test_deploy_examples_carry_valid_specs():
    root = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    found = 0
    for path in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and "spec.yaml" in doc.get("data", {}):
                spec = parse_spec(doc["data"]["spec.yaml"])
                assert spec.kind in ("eval", "train")
                found += 1
    assert found == 2
