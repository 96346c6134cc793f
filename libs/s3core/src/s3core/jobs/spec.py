"""Job specs: the platform's YAML config plus what the job itself needs, validated before anything starts.

A spec is the same YAML file the CLI commands take (``search:``, ``generator:``, ``eval:``, ...,
``presets: [...]``; see :mod:`s3core.config`) with four more top-level keys::

    kind: eval                  # index | precompute | eval | train | infer (or given on submit)
    job:                        # the command's own arguments, typed per kind (below)
      questions: [runs/world/synth_1hop.jsonl]
      methods: [naive-rag]
      index: runs/idx
      out: runs/eval
    run:                        # how the controller runs it
      max_attempts: 2           # retries after a failed attempt (worker died, crashed, ...)
      timeout_s: 3600           # 0 = no limit
    kubernetes:                 # only read by the kubernetes backend
      gpus: 1
      node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}

Every problem raises :class:`~s3core.errors.ConfigError` (``INVALID_ARGUMENT`` at the RPC edge)
whose message starts with the field's path, e.g. ``job.questions[0]: no such file``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from s3core.config import Config, coerce_value, config_from_dict, config_to_dict
from s3core.errors import ConfigError, InvalidArgument
from s3core.jobs.model import KINDS

# --- the `job:` mapping, one dataclass per kind ----------------------------------------------------


@dataclass
class IndexArgs:
    """``s3 index build``: a BM25 or dense index directory from a FlashRAG-format corpus."""

    corpus: str = ""  # corpus jsonl ({id, contents} or {id, title, text}); required
    backend: Literal["bm25", "dense"] = "bm25"
    out: str = ""  # index directory to write (atomically); required
    encoder: str = ""  # dense: encoder model ("" = embedded all-MiniLM-L6-v2)
    name: str = ""  # index name ("" = the directory name)
    limit: int = 0  # index only the first N documents (0 = all)
    threads: int = 0  # dense: torch CPU threads (0 = library default)
    params: dict[str, Any] = field(default_factory=dict)  # backend parameters (bm25: k1, b, method; dense: ...)

    def validate(self, path: str, cfg: Config) -> None:
        _require(self.corpus, f"{path}.corpus", "the corpus jsonl to index")
        _require(self.out, f"{path}.out", "the index directory to write")
        _non_negative(self, path, "limit", "threads")

    def inputs(self) -> dict[str, str]:
        return {"corpus": self.corpus}


@dataclass
class PrecomputeArgs:
    """``s3 precompute``: naive-RAG baselines cached in Redis (idempotent, resumable)."""

    questions: list[str] = field(default_factory=list)  # FlashRAG question files; required
    index: str = ""  # index directory for the retriever started for the run (unless `retriever` is given)
    k: int = 0  # naive-RAG top-k (0 = search.initial_k)
    limit: int = 0  # first N questions of each file (0 = all)
    retriever: str = ""  # host:port of a running retriever ("" = start one for the run)
    generator: str = ""  # host:port of a running generator ("" = start one for the run)
    redis_url: str = ""  # baseline cache ("" = redis.url, else the job store's Redis)
    namespace: str = "s3"  # key namespace of the baseline cache
    summary_out: str = ""  # also write the summary JSON here

    def validate(self, path: str, cfg: Config) -> None:
        _require_list(self.questions, f"{path}.questions", "FlashRAG question files")
        _non_negative(self, path, "k", "limit")
        if not self.index and not self.retriever:
            raise ConfigError(f"{path}.index is required (or give {path}.retriever, the address of a running retriever)")
        if not self.namespace or ":" in self.namespace or "*" in self.namespace:
            raise ConfigError(f"{path}.namespace must be a non-empty word without ':' or '*', got {self.namespace!r}")

    def inputs(self) -> dict[str, str]:
        out = {f"questions[{i}]": q for i, q in enumerate(self.questions)}
        if self.index and not self.retriever:
            out["index"] = self.index
        return out


@dataclass
class EvalArgs:
    """``s3 eval``: methods on question sets through the services; results under ``out``."""

    questions: list[str] = field(default_factory=list)  # FlashRAG question files; required
    methods: list[str] = field(default_factory=list)  # e.g. [naive-rag, s3]; required
    out: str = ""  # output directory; required
    index: str = ""  # index directory (methods that retrieve, and a searcher started for the run)
    k: int = 0  # naive-RAG / baseline top-k (0 = eval.k)
    limit: int = 0  # first N questions of each file (0 = eval.limit)
    retriever: str = ""  # host:port of running services ("" = start them for the run)
    generator: str = ""
    searcher: str = ""
    searcher_model: str = ""  # policy of a searcher started for the run ("" = searcher.model)
    baseline_llm: str = ""  # host:port of a generator serving the LLM baselines ("" = the generator)
    seed: int = 0  # rollout seed of the s3 methods (and of `sample`)
    ircot_steps: int = 3
    mc: str = "auto"  # multiple-choice scoring: auto | on | off (docs/evaluation.md)
    judge_only: bool = False  # GenAcc = the judge's verdict on every row (`s3 eval --judge only`)
    sample: int = 0  # N questions of each file drawn at random with `seed` (0 = all / `limit`)

    def validate(self, path: str, cfg: Config) -> None:
        from s3core.eval.methods import get_spec

        _require_list(self.questions, f"{path}.questions", "FlashRAG question files")
        _require_list(self.methods, f"{path}.methods", "evaluation methods, e.g. [naive-rag]")
        _require(self.out, f"{path}.out", "the output directory")
        _non_negative(self, path, "k", "limit")
        if self.ircot_steps < 1:
            raise ConfigError(f"{path}.ircot_steps must be >= 1, got {self.ircot_steps}")
        if self.mc not in ("auto", "on", "off"):
            raise ConfigError(f"{path}.mc must be auto, on or off, got {self.mc!r}")
        _non_negative(self, path, "sample")
        if self.sample and self.limit:
            raise ConfigError(f"{path}: give either limit or sample, not both")
        specs = []
        for i, m in enumerate(self.methods):
            try:
                specs.append(get_spec(m))
            except InvalidArgument as exc:
                raise ConfigError(f"{path}.methods[{i}]: {exc}") from None
            if m in self.methods[:i]:
                raise ConfigError(f"{path}.methods[{i}]: {m!r} is listed twice")
        needs_index = any(s.needs_retriever for s in specs) or any(s.needs_searcher for s in specs) and not self.searcher
        if needs_index and not self.index and not self.retriever:
            raise ConfigError(f"{path}.index is required by methods {', '.join(self.methods)} "
                              f"(or give {path}.retriever, the address of a running retriever)")

    def needs_index_dir(self) -> bool:
        from s3core.eval.methods import get_spec

        specs = [get_spec(m) for m in self.methods]
        need = any(s.needs_retriever for s in specs) or (any(s.needs_searcher for s in specs) and not self.searcher)
        return need and not self.retriever

    def inputs(self) -> dict[str, str]:
        out = {f"questions[{i}]": q for i, q in enumerate(self.questions)}
        if self.index and not self.retriever:
            out["index"] = self.index
        return out


@dataclass
class TrainArgs:
    """``s3 train``: the run itself is the ``train:`` / ``rl:`` / ``searcher:`` / ``learner:`` config."""

    resume: bool = True  # continue from the newest valid checkpoint in train.checkpoint_dir
    index: str = ""  # index of a retriever started for the run ("" = retriever.index)
    model: str = ""  # initial policy ("" = learner.model, else searcher.model)

    def validate(self, path: str, cfg: Config) -> None:
        if not cfg.train.questions:
            raise ConfigError("train.questions is empty: list the training sets (FlashRAG .jsonl files)")
        if not (cfg.train.retriever or cfg.train.searcher or self.index or cfg.retriever.index):
            raise ConfigError(f"{path}.index is required to start a retriever for the run (or set retriever.index, "
                              "or give train.retriever / train.searcher addresses)")

    def inputs(self) -> dict[str, str]:
        return {}  # the training sets and the index depend on the config: see JobSpec.inputs


@dataclass
class InferArgs:
    """Run the searcher over question sets and save its trajectories and the contexts it assembles."""

    questions: list[str] = field(default_factory=list)  # FlashRAG question files; required
    out: str = ""  # output directory (trajectories.jsonl, contexts.jsonl, summary.json); required
    index: str = ""  # index directory for a retriever started for the run
    retriever: str = ""  # host:port of a running retriever ("" = start one from `index`)
    searcher: str = ""  # host:port of a running searcher ("" = start one for the run)
    searcher_model: str = ""  # policy of a searcher started for the run ("" = searcher.model)
    limit: int = 0  # first N questions of each file (0 = all)
    n: int = 1  # trajectories per question
    seed: int = 0
    batch_size: int = 32  # questions per Rollout request
    temperature: float = -1.0  # sampling temperature (< 0 = search.temperature_eval)
    ablation: Literal["none", "no_selection", "no_initial", "both"] = "none"  # context assembly (spec §3)

    def validate(self, path: str, cfg: Config) -> None:
        _require_list(self.questions, f"{path}.questions", "FlashRAG question files")
        _require(self.out, f"{path}.out", "the output directory")
        _non_negative(self, path, "limit")
        for name in ("n", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature > 5.0:
            raise ConfigError(f"{path}.temperature must be at most 5, got {self.temperature}")
        if not self.searcher and not self.index and not self.retriever:
            raise ConfigError(f"{path}.index is required to start a searcher for the run "
                              f"(or give {path}.retriever or {path}.searcher addresses)")

    def inputs(self) -> dict[str, str]:
        out = {f"questions[{i}]": q for i, q in enumerate(self.questions)}
        if self.index and not self.retriever and not self.searcher:
            out["index"] = self.index
        return out


ARGS_BY_KIND: dict[str, type] = {
    "index": IndexArgs,
    "precompute": PrecomputeArgs,
    "eval": EvalArgs,
    "train": TrainArgs,
    "infer": InferArgs,
}


# --- how it runs ----------------------------------------------------------------------------------


@dataclass
class RunPolicy:
    """``run:`` -- retries and limits, the same on every backend."""

    max_attempts: int = 1  # attempts in all; a failed attempt is retried while attempts are left
    timeout_s: float = 0.0  # wall-clock limit of one attempt (0 = none); exceeded -> failed, no retry
    retry_delay_s: float = 5.0  # wait before attempt 2; doubles for each later attempt (at most 10 min)

    def validate(self, path: str) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise ConfigError(f"{path}.max_attempts must be in [1, 20], got {self.max_attempts}")
        if not 0 <= self.retry_delay_s <= 3600:
            raise ConfigError(f"{path}.retry_delay_s must be in [0, 3600], got {self.retry_delay_s}")
        if self.timeout_s < 0:
            raise ConfigError(f"{path}.timeout_s must be >= 0 (0 = no limit), got {self.timeout_s}")


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_TOLERATION_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}


@dataclass
class KubernetesOptions:
    """``kubernetes:`` -- read only by the kubernetes backend (a batch/v1 Job, or a KubeRay RayJob)."""

    image: str = ""  # worker image ("" = the controller's --k8s-image)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = ""  # "" = the controller's --k8s-namespace
    cpu: str = "1"  # CPU request (limit too when limit_cpu is set)
    memory: str = "4Gi"  # memory request and limit
    limit_cpu: bool = False
    gpus: int = 0  # GPUs per pod (requests = limits)
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str = ""
    priority_class: str = ""
    pvc: str = ""  # PersistentVolumeClaim with data, indexes and outputs, mounted at mount_path
    mount_path: str = "/data"
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables of the worker
    backoff_limit: int = 0  # pod retries inside one attempt (the controller retries attempts itself)
    ttl_seconds_after_finished: int = 86400  # the Kubernetes Job is deleted this long after it ends
    ray_workers: int = 0  # train only: > 0 = a KubeRay RayJob with this many worker pods, when installed
    ray_version: str = "2.60.0"  # the ray[train] pin of requirements.txt

    def validate(self, path: str) -> None:
        for name in ("cpu", "memory"):
            v = getattr(self, name)
            if not _QUANTITY.match(v):
                raise ConfigError(f"{path}.{name} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi): {v!r}")
        for name in ("gpus", "backoff_limit", "ttl_seconds_after_finished", "ray_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(self, name)}")
        if self.gpus and not self.gpu_resource:
            raise ConfigError(f"{path}.gpu_resource is empty")
        for k, v in self.node_selector.items():
            label_problem = _label_key_problem(k) or _label_value_problem(v)
            if label_problem:
                raise ConfigError(f"{path}.node_selector[{k!r}]: {label_problem}")
        for i, t in enumerate(self.tolerations):
            where = f"{path}.tolerations[{i}]"
            if not isinstance(t, dict):
                raise ConfigError(f"{where} must be a mapping")
            unknown = sorted(set(t) - _TOLERATION_KEYS)
            if unknown:
                raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_TOLERATION_KEYS))})")
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ConfigError(f"{where}.operator must be Equal or Exists, got {t.get('operator')!r}")
            if t.get("effect", "") not in _TOLERATION_EFFECTS:
                raise ConfigError(f"{where}.effect must be one of NoSchedule, PreferNoSchedule, NoExecute")
            for key in ("key", "value", "effect", "operator"):
                if key in t and not isinstance(t[key], str):
                    raise ConfigError(f"{where}.{key} must be a string, got {t[key]!r}")
            if "tolerationSeconds" in t and (isinstance(t["tolerationSeconds"], bool)
                                             or not isinstance(t["tolerationSeconds"], int)):
                raise ConfigError(f"{where}.tolerationSeconds must be an integer")
        for k in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ConfigError(f"{path}.env: {k!r} is not an environment variable name")
        if not self.mount_path.startswith("/"):
            raise ConfigError(f"{path}.mount_path must be absolute, got {self.mount_path!r}")


# --- the whole spec -------------------------------------------------------------------------------

JOB_KEYS = ("kind", "presets", "job", "run", "kubernetes")


@dataclass
class JobSpec:
    kind: str
    config: Config
    args: Any  # one of ARGS_BY_KIND's classes
    run: RunPolicy
    kubernetes: KubernetesOptions
    presets: list[str] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        """The fully resolved spec (defaults and presets applied), as stored in the run record."""
        return {
            "kind": self.kind,
            "presets": list(self.presets),
            "config": config_to_dict(self.config),
            "job": dataclasses.asdict(self.args),
            "run": dataclasses.asdict(self.run),
            "kubernetes": dataclasses.asdict(self.kubernetes),
        }

    def inputs(self) -> dict[str, str]:
        """Named input paths (files and index directories) the job reads."""
        out: dict[str, str] = dict(self.args.inputs())
        if self.kind == "train":
            tc = self.config.train
            out.update({f"train.questions[{i}]": q for i, q in enumerate(tc.questions)})
            index = self.args.index or self.config.retriever.index
            if index and not (tc.retriever or tc.searcher):
                out["index"] = index
        return out

    def seeds(self) -> dict[str, int]:
        s = {"train.seed": self.config.train.seed, "rl.seed": self.config.rl.seed}
        if hasattr(self.args, "seed"):
            s["job.seed"] = int(self.args.seed)
        return s


def parse_spec(spec_yaml: str, kind: str = "") -> JobSpec:
    """Parse and validate a spec; ``kind`` (from the request) and a ``kind:`` key must agree."""
    try:
        data = yaml.safe_load(spec_yaml) if spec_yaml and spec_yaml.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec_yaml: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"spec_yaml: the top level must be a mapping, got {type(data).__name__}")
    data = dict(data)
    spec_kind = data.pop("kind", "") or ""
    if not isinstance(spec_kind, str):
        raise ConfigError(f"kind must be a string, got {spec_kind!r}")
    if kind and spec_kind and kind != spec_kind:
        raise ConfigError(f"kind: the spec says {spec_kind!r} but the request says {kind!r}")
    kind = kind or spec_kind
    if not kind:
        raise ConfigError(f"kind is required: one of {', '.join(KINDS)} (a top-level `kind:` or the request's kind)")
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    presets = data.pop("presets", []) or []
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        raise ConfigError("presets must be a list of preset names")
    job_data = data.pop("job", None) or {}
    run_data = data.pop("run", None) or {}
    k8s_data = data.pop("kubernetes", None) or {}
    config_keys = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - config_keys)
    if unknown:
        known = sorted(config_keys | set(JOB_KEYS))
        raise ConfigError(f"unknown top-level key {unknown[0]!r} (known: {', '.join(known)})")
    cfg = config_from_dict(data, presets)
    args = build_typed(ARGS_BY_KIND[kind], job_data, "job")
    args.validate("job", cfg)
    run = build_typed(RunPolicy, run_data, "run")
    run.validate("run")
    k8s = build_typed(KubernetesOptions, k8s_data, "kubernetes")
    k8s.validate("kubernetes")
    return JobSpec(kind=kind, config=cfg, args=args, run=run, kubernetes=k8s, presets=list(presets))


def check_local_paths(spec: JobSpec, workdir: str | Path) -> None:
    """The inputs a job on this machine reads must exist (relative paths resolve against ``workdir``)."""
    root = Path(workdir or ".")
    for name, raw in spec.inputs().items():
        where = "job." + name if not name.startswith("train.") else name
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else root / p
        if name == "index":
            from s3core.retrieval.index import is_index_path

            if not is_index_path(p):
                raise ConfigError(f"{where}: {raw} is not an index directory (no manifest.json under {p}); "
                                  "build one with `s3 index build` or an index job")
        elif not p.is_file():
            raise ConfigError(f"{where}: no such file: {raw}" + ("" if Path(raw).is_absolute() else f" (in {root})"))


# --- labels (Kubernetes label syntax, so they can go on the Job objects too) ----------------------

_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _label_key_problem(key: str) -> str:
    if not isinstance(key, str) or not key:
        return "a label key must be a non-empty string"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain (e.g. example.com)"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return (f"label key {key!r}: the name must be 1-63 characters of letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return ""


def _label_value_problem(value: str) -> str:
    if not isinstance(value, str):
        return f"label value {value!r} must be a string"
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return (f"label value {value!r} must be at most 63 characters of letters, digits, '-', '_', '.', "
                "starting and ending with a letter or digit")
    return ""


def validate_labels(labels: dict[str, str], path: str = "labels") -> dict[str, str]:
    for k, v in labels.items():
        problem = _label_key_problem(k) or _label_value_problem(v)
        if problem:
            raise ConfigError(f"{path}: {problem}")
        if k.startswith("s3.dev/"):
            raise ConfigError(f"{path}: keys under s3.dev/ are reserved for the controller, got {k!r}")
    return dict(labels)


# --- a small typed builder (unknown keys and wrong types name the field) ---------------------------


def build_typed(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key {path}.{unknown[0]} (known: {', '.join(sorted(fields))})")
    return cls(**{name: coerce_value(hints[name], value, f"{path}.{name}") for name, value in data.items()})


def _require(value: str, path: str, what: str) -> None:
    if not value or not str(value).strip():
        raise ConfigError(f"{path} is required: {what}")


def _require_list(value: list[str], path: str, what: str) -> None:
    if not value:
        raise ConfigError(f"{path} is required: a list of {what}")
    for i, v in enumerate(value):
        if not v or not str(v).strip():
            raise ConfigError(f"{path}[{i}] is empty")


def _non_negative(obj: Any, path: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(obj, name)}")
