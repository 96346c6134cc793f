"""What each job kind does, given a validated spec: the same code paths as the CLI commands.

A body reads its typed arguments from ``ctx.spec.args`` and the platform config from
``ctx.spec.config``, reports progress through ``ctx.progress``, and fills ``ctx.artifacts``
(name -> absolute path), ``ctx.counters`` (numbers for the run record) and ``ctx.results``.
Services a body needs and was given no address for are started on loopback for the run, with the
resolved config written to a file so they see the same settings, and stopped when it ends.

Progress of the library loops (eval, precompute, index build) is read from their tqdm bars by
:class:`TqdmWatcher`, so the loops need no job-specific hooks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from s3core.config import config_to_dict
from s3core.jobs.record import describe_model
from s3core.jobs.spec import JobSpec

logger = logging.getLogger(__name__)


@dataclass
class JobContext:
    job_id: str
    attempt: int
    spec: JobSpec
    job_dir: Path  # per-attempt scratch and state (resolved config, summaries)
    redis_url: str = ""  # the job store's Redis (the default baseline cache of precompute)
    report: Callable[[float, str], None] = lambda value, message: None
    artifacts: dict[str, str] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    _config_file: str = ""

    def progress(self, value: float, message: str = "") -> None:
        self.report(min(1.0, max(0.0, float(value))), message)

    def config_file(self) -> str:
        """The resolved platform config as a YAML file (handed to services started for the run)."""
        if not self._config_file:
            path = self.job_dir / "config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config_to_dict(self.spec.config), sort_keys=False), encoding="utf-8")
            self._config_file = str(path)
            self.artifacts["config"] = str(path)
        return self._config_file

    def count(self, name: str, value: float) -> None:
        self.counters[name] = self.counters.get(name, 0) + value


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


# --- progress from tqdm bars ------------------------------------------------------------------------

class TqdmWatcher:
    """Polls the live tqdm bars of this process and reports ``start + span * done`` where ``done`` =
    (bars finished + the current bar's n/total) / ``bars``.  Bars without a total only update the
    message."""

    def __init__(self, ctx: JobContext, bars: int = 1, start: float = 0.0, end: float = 1.0,
                 interval: float = 1.0) -> None:
        self.ctx = ctx
        self.bars = max(1, bars)
        self.start = start
        self.span = end - start
        self.interval = interval
        self._stop = threading.Event()
        self._info: dict[int, tuple[Any, str, float, float]] = {}  # id -> (bar, desc, n, total), in order seen
        self._last: tuple[float, str] = (-1.0, "")
        self._thread = threading.Thread(target=self._run, name="s3-job-progress", daemon=True)

    def _instances(self) -> list[Any]:
        try:
            from tqdm import tqdm
        except ImportError:
            return []
        inst = getattr(tqdm, "_instances", None)
        if inst is None:
            return []
        try:
            return list(inst)
        except RuntimeError:  # the WeakSet changed while copying
            return []

    def poll(self) -> None:
        live = [b for b in self._instances() if not getattr(b, "disable", False)]
        for b in live:
            # the bar itself is kept (a strong reference), so its id is never reused by a later bar
            self._info[id(b)] = (b, str(getattr(b, "desc", "") or "").strip(), float(getattr(b, "n", 0) or 0),
                                 float(getattr(b, "total", 0) or 0))
        live_ids = {id(b) for b in live}
        gone = [i for i in self._info if i not in live_ids]
        value, message = self._last
        if live:
            _, desc, n, total = self._info[id(live[-1])]
            frac = (len(gone) + (n / total if total else 0.0)) / self.bars
            value = self.start + self.span * min(1.0, frac)
            message = f"{desc} {int(n)}/{int(total)}" if total else f"{desc} {int(n)}"
        elif gone:
            _, desc, n, total = self._info[gone[-1]]
            value = self.start + self.span * min(1.0, len(gone) / self.bars)
            message = f"{desc} done ({int(total or n)})"
        if (value, message) != self._last and value >= 0:
            self._last = (value, message)
            self.ctx.progress(value, message)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - progress must never break the job
                logger.debug("progress poll failed", exc_info=True)

    def __enter__(self) -> "TqdmWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval)


# --- the bodies -------------------------------------------------------------------------------------

def run_index(ctx: JobContext) -> None:
    from s3core.config import EMBEDDED_ENCODER
    from s3core.retrieval.index import build_index

    a = ctx.spec.args
    ctx.progress(0.0, f"building a {a.backend} index of {a.corpus}")
    with TqdmWatcher(ctx, bars=1, start=0.0, end=0.95):
        manifest = build_index(a.corpus, a.backend, a.out, encoder=a.encoder or EMBEDDED_ENCODER,
                               show_progress=True, name=a.name or None, params=a.params or None,
                               limit=a.limit or None, threads=a.threads)
    ctx.artifacts["index"] = _abs(a.out)
    ctx.artifacts["manifest"] = _abs(os.path.join(a.out, "manifest.json"))
    ctx.counters["documents"] = int(manifest["num_documents"])
    ctx.results.update(backend=manifest["backend"], name=manifest["name"], corpus_sha256=manifest["corpus_sha256"])
    if a.backend == "dense":
        ctx.models["encoder"] = describe_model(a.encoder or EMBEDDED_ENCODER)


def run_precompute(ctx: JobContext) -> None:
    from s3core.cache.baseline import BaselineCache, redis_url
    from s3core.eval.job import check_index_dir, load_question_sets, local_services
    from s3core.eval.precompute import precompute
    from s3core.io import write_json
    from s3core.rpc.clients import GeneratorClient, retriever_client

    a, cfg = ctx.spec.args, ctx.spec.config
    sets = load_question_sets(a.questions, a.limit)
    url = a.redis_url or cfg.redis.url or ctx.redis_url or redis_url("", cfg.redis.port)
    cache = BaselineCache.from_url(url, namespace=a.namespace)
    if not a.retriever:
        check_index_dir(a.index)
    k = a.k or cfg.search.initial_k
    ctx.progress(0.02, "starting services" if not (a.retriever and a.generator) else "connecting")
    with local_services(cfg, index=a.index, retriever=a.retriever, generator=a.generator,
                        config_path=ctx.config_file()) as addrs:
        ret, gen = retriever_client(addrs.retriever), GeneratorClient(addrs.generator)
        try:
            ret.wait_ready()
            gen.wait_ready()
            info = gen.model_info()
            ctx.models["generator"] = {**describe_model(cfg.generator.model), "served": info.model,
                                       "backend": info.backend, "prompt_version": info.prompt_version}
            with TqdmWatcher(ctx, bars=1, start=0.1, end=0.98):
                summary = precompute(sets, ret, gen, cache, k=k, judge=cfg.generator.judge == "model",
                                     batch_size=cfg.eval.batch_size, show_progress=True)
        finally:
            ret.close()
            gen.close()
    out = a.summary_out or str(ctx.job_dir / "precompute-summary.json")
    write_json(out, summary.to_json())
    ctx.artifacts["summary"] = _abs(out)
    ctx.counters.update(questions=sum(d.n for d in summary.per_dataset.values()), cache_hits=summary.hits,
                        cache_misses=summary.misses, baselines_written=summary.written)
    ctx.results.update(genacc=summary.genacc, em=summary.em, f1=summary.f1, k=k, redis=url, namespace=a.namespace,
                       per_dataset={n: {"n": d.n, "genacc": d.genacc, "em": d.em}
                                    for n, d in summary.per_dataset.items()})


def run_eval(ctx: JobContext) -> None:
    from s3core.eval.job import EvalJob, run_eval_job

    a, cfg = ctx.spec.args, ctx.spec.config
    job = EvalJob(
        questions=list(a.questions), methods=list(a.methods), out=a.out, index=a.index, k=a.k or cfg.eval.k,
        limit=a.limit or cfg.eval.limit, retriever=a.retriever, generator=a.generator, config=cfg,
        config_path=ctx.config_file(), show_progress=True, searcher=a.searcher, searcher_model=a.searcher_model,
        baseline_llm=a.baseline_llm, seed=a.seed, ircot_steps=a.ircot_steps, mc=a.mc, judge_only=a.judge_only,
        sample=a.sample, sample_seed=a.seed,
    )
    ctx.progress(0.02, "starting services" if not a.generator else "connecting")
    ctx.models["generator"] = describe_model(cfg.generator.model) if not a.generator else {"address": a.generator}
    if any(m.startswith("s3") for m in a.methods):
        ctx.models["searcher"] = (describe_model(a.searcher_model or cfg.searcher.model) if not a.searcher
                                  else {"address": a.searcher})
    with TqdmWatcher(ctx, bars=len(a.methods), start=0.05, end=0.98):
        results = run_eval_job(job)
    out = Path(a.out)
    ctx.artifacts["out"] = _abs(a.out)
    if (out / "results.md").is_file():
        ctx.artifacts["results.md"] = _abs(str(out / "results.md"))
    for res in results:
        method = res["method"]
        target = out if len(a.methods) == 1 else out / method
        ctx.artifacts[f"{method}/results.json"] = _abs(str(target / "results.json"))
        ctx.results[method] = {"average": res["average"],
                               "datasets": {d: {k: v for k, v in r.items() if k in ("n", "genacc", "em", "f1")}
                                            for d, r in res["datasets"].items()}}
    if results:
        ctx.counters["questions"] = sum(int(r.get("n", 0)) for r in results[0]["datasets"].values())
    ctx.counters["methods"] = len(results)
    ctx.counters["judge_calls"] = sum(int(r.get("judge_calls", 0)) for res in results
                                      for r in res["datasets"].values())


def run_train(ctx: JobContext) -> None:
    from s3core.train import TrainJob, run_training

    a, cfg = ctx.spec.args, ctx.spec.config
    k = ctx.spec.kubernetes
    if k.ray_workers > 0 and cfg.train.backend == "local":
        # a multi-worker train job (a KubeRay RayJob on Kubernetes): the update runs through Ray Train
        # on its workers; the driver finds the cluster through RAY_ADDRESS, which KubeRay sets
        cfg.train.backend, cfg.train.num_workers, cfg.train.use_gpu = "ray", k.ray_workers, k.gpus > 0
    model = a.model or cfg.learner.model or cfg.searcher.model
    ctx.models["policy"] = describe_model(model)
    ctx.progress(0.0, "starting services" if not cfg.train.searcher else "connecting")
    summary = run_training(TrainJob(config=cfg, config_path=ctx.config_file(), index=a.index, resume=a.resume,
                                    model=a.model, show_progress=False, redis_url=ctx.redis_url,
                                    progress=ctx.progress))
    ctx.artifacts["checkpoints"] = _abs(summary.checkpoint_dir)
    if summary.last_checkpoint:
        ctx.artifacts["last_checkpoint"] = _abs(summary.last_checkpoint)
    if summary.policy_path:
        ctx.artifacts["policy"] = _abs(summary.policy_path)
    metrics = Path(summary.checkpoint_dir) / "metrics.jsonl"
    if metrics.is_file():
        ctx.artifacts["metrics"] = _abs(str(metrics))
    ctx.counters.update(steps=summary.steps - summary.start_step, train_questions=summary.train_questions,
                        filtered_from=summary.filtered_from, train_seconds=round(summary.seconds, 3))
    ctx.results.update(step=summary.steps, start_step=summary.start_step, policy_version=summary.version)
    if summary.history:
        last = summary.history[-1]
        ctx.results["last_step"] = {k: v for k, v in last.items() if isinstance(v, (int, float, str))}
        for key in ("tokens", "generated_tokens", "search_calls", "trajectories"):
            total = sum(float(h.get(key, 0) or 0) for h in summary.history if isinstance(h, dict))
            if total:
                ctx.counters[key] = total


@contextlib.contextmanager
def _searcher_service(ctx: JobContext) -> Iterator[str]:
    """The searcher address of an infer job: the given one, or a searcher (and a retriever, when no
    address is given) started on loopback for the run."""
    from s3core.eval.job import check_index_dir
    from s3core.runtime.local import LocalStack, require_searcher_installed, run_state_dir

    a, cfg = ctx.spec.args, ctx.spec.config
    if a.searcher:
        yield a.searcher
        return
    require_searcher_installed()
    if not a.retriever:
        check_index_dir(a.index)
    with run_state_dir("s3-infer-") as tmp:
        stack = LocalStack(tmp, detach=False)
        try:
            retriever = a.retriever or stack.start_retriever(a.index, ctx.config_file()).address
            yield stack.start_searcher(cfg.searcher, retriever, ctx.config_file(), a.searcher_model).address
        finally:
            stack.down()


def run_infer(ctx: JobContext) -> None:
    from s3core.eval.job import load_question_sets
    from s3core.eval.report import trajectory_record
    from s3core.io import write_json, write_jsonl
    from s3core.rpc.clients import SearcherClient
    from s3core.rpc.convert import KNOB_FIELDS
    from s3core.search.context import build_context

    a, cfg = ctx.spec.args, ctx.spec.config
    sets = load_question_sets(a.questions, a.limit)
    total = sum(len(qs) for qs in sets.values())
    knobs: dict[str, Any] = {name: getattr(cfg.search, name) for name in KNOB_FIELDS}
    knobs["temperature"] = a.temperature if a.temperature >= 0 else cfg.search.temperature_eval
    ctx.models["searcher"] = (describe_model(a.searcher_model or cfg.searcher.model) if not a.searcher
                              else {"address": a.searcher})
    trajectories: list[dict[str, Any]] = []
    contexts: list[dict[str, Any]] = []
    versions: set[int] = set()
    done = 0
    ctx.progress(0.02, "starting services" if not a.searcher else "connecting")
    with _searcher_service(ctx) as address:
        client = SearcherClient(address)
        try:
            client.wait_ready()
            info = client.policy_info()
            ctx.models["searcher"].update(served=info.model, policy_version=int(info.version),
                                          checkpoint_path=info.checkpoint_path)
            ctx.progress(0.1, f"0/{total} questions")
            for ds, qs in sets.items():
                for start in range(0, len(qs), a.batch_size):
                    batch = qs[start:start + a.batch_size]
                    trajs = client.rollout(batch, knobs, n=a.n, seed=a.seed)
                    for key in ("generated_tokens", "search_calls", "generate_calls", "turns", "searches",
                                "retrieval_retries", "rollout_seconds"):
                        if key in client.last_stats:
                            ctx.count(key, client.last_stats[key])
                    for i, t in enumerate(trajs):
                        q = batch[i // a.n]
                        docs = build_context(t.blocks, a.ablation)
                        versions.add(int(t.policy_version))
                        trajectories.append(trajectory_record(ds, q.id, "s3", t, [d.id for d in docs]))
                        contexts.append({
                            "dataset": ds, "id": q.id, "sample": i % a.n, "question": q.question,
                            "golden_answers": list(q.golden_answers), "policy_version": int(t.policy_version),
                            "turns": len(t.turns), "searches": t.n_searches, "ablation": a.ablation,
                            "context_doc_ids": [d.id for d in docs],
                            "context": [{"id": d.id, "title": d.title, "text": d.text} for d in docs],
                        })
                    done += len(batch)
                    ctx.progress(0.1 + 0.88 * done / max(1, total), f"{done}/{total} questions")
        finally:
            client.close()
    out = Path(a.out)
    write_jsonl(out / "trajectories.jsonl", trajectories)
    write_jsonl(out / "contexts.jsonl", contexts)
    summary = {"questions": total, "trajectories": len(trajectories), "n": a.n, "seed": a.seed,
               "policy_versions": sorted(versions), "knobs": knobs, "ablation": a.ablation,
               "datasets": {ds: len(qs) for ds, qs in sets.items()}}
    write_json(out / "summary.json", summary)
    ctx.artifacts.update(out=_abs(a.out), trajectories=_abs(str(out / "trajectories.jsonl")),
                         contexts=_abs(str(out / "contexts.jsonl")), summary=_abs(str(out / "summary.json")))
    ctx.counters.update(questions=total, trajectories=len(trajectories))
    ctx.results.update(policy_versions=sorted(versions), datasets=summary["datasets"])


BODIES: dict[str, Callable[[JobContext], None]] = {
    "index": run_index,
    "precompute": run_precompute,
    "eval": run_eval,
    "train": run_train,
    "infer": run_infer,
}
