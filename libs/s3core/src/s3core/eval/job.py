"""An evaluation job end to end: services (given by address, or started on loopback for the run),
clients, the evaluation loop, and the result files.  Used by `s3 eval`, `s3 demo` and, later, the
controller's eval jobs.

Services a job uses: the generator (always: it answers and judges); the retriever (methods that
retrieve, and a searcher started for the run); the searcher (the s3 methods: ``SearcherClient.rollout``
with the job's ``config.search`` knobs, so ``--preset 8-3-3`` applies); the baseline LLM (a generator
service address whose ``Complete`` RPC serves ``deepretrieval``/``ircot``/``search-r1``; default: the
generator itself).  All s3 variants of one job share one trajectory per question.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from s3core.config import Config, config_to_dict
from s3core.data import load_questions
from s3core.errors import InvalidArgument, NotFound
from s3core.eval.baselines import BASELINE_PROMPT_VERSION, complete_via_generator
from s3core.eval.methods import TrajectoryCache, get_spec
from s3core.eval.progress import PROGRESS_FILE, ProgressLog, fingerprint
from s3core.eval.report import write_outcome, write_summary
from s3core.eval.runner import evaluate
from s3core.rpc.clients import GeneratorClient, SearcherClient, retriever_client
from s3core.rpc.retry import RetryPolicy, call_with_retry
from s3core.runtime.local import LocalStack, require_searcher_installed, run_state_dir
from s3core.types import Question

logger = logging.getLogger(__name__)


@dataclass
class EvalJob:
    questions: list[str]
    methods: list[str]
    out: str
    index: str = ""
    k: int = 3
    limit: int = 0
    retriever: str = ""  # host:port of a running retriever; empty = start one for the run
    generator: str = ""  # host:port of a running generator; empty = start one for the run
    config: Config = field(default_factory=Config)
    config_path: str = ""
    show_progress: bool = True
    searcher: str = ""  # host:port of a running searcher; empty = start one for the run (s3 methods only)
    searcher_model: str = ""  # policy model when a searcher is started (empty: the service's default)
    baseline_llm: str = ""  # host:port of a generator service for the baselines' LLM calls; empty = the generator
    seed: int = 0  # rollout seed (s3 methods)
    ircot_steps: int = 3
    mc: str = "auto"  # multiple-choice mode: auto (detected from the data) | on | off (s3core.data.io)
    judge_only: bool = False  # GenAcc = the judge's verdict on every row (`--judge only`)
    sample: int = 0  # N questions per file drawn at random with sample_seed (0: all, or the first `limit`)
    sample_seed: int = 0
    restart: bool = False  # discard what an earlier run of this evaluation finished (else resume from it)


def load_question_sets(paths: Sequence[str], limit: int = 0, *, mc: str = "auto", sample: int = 0,
                       sample_seed: int = 0) -> dict[str, list[Question]]:
    sets: dict[str, list[Question]] = {}
    for p in paths:
        qs = load_questions(p, limit=limit or None, mc=mc, sample=sample or None, seed=sample_seed)  # type: ignore[arg-type]
        if not qs:  # scoring it would give GenAcc 0.0 and drag every average down
            raise InvalidArgument(f"{p}: no questions in the file (it is empty or holds only blank lines)")
        name = qs[0].dataset
        if name in sets:
            raise InvalidArgument(f"two question files give the dataset name {name!r}: rename one")
        sets[name] = qs
    return sets


@dataclass
class ServiceAddresses:
    """Addresses of the services of a run.  Unpacks as ``(retriever, generator)`` (the form callers
    used before the searcher existed); read ``.searcher`` for the third."""

    retriever: str
    generator: str
    searcher: str = ""

    def __iter__(self) -> Iterator[str]:
        return iter((self.retriever, self.generator))


@contextlib.contextmanager
def local_services(config: Config, *, index: str = "", retriever: str = "", generator: str = "",
                   need_retriever: bool = True, config_path: str = "", need_searcher: bool = False,
                   searcher: str = "", searcher_model: str = "") -> Iterator[ServiceAddresses]:
    """Yield the service addresses: the given ones, and for each one not given a service started on
    loopback for the duration of the block (stopped afterwards).

    A searcher is started only with ``need_searcher`` and no ``searcher`` address
    (``python -m s3_searcher --retriever ADDR --backend B --model M``, from ``config.searcher``;
    ``searcher_model`` overrides the model); it needs a retriever, which is then started too when
    no address is given.
    """
    start_searcher = need_searcher and not searcher
    need_retriever = need_retriever or start_searcher
    if generator and (retriever or not need_retriever) and not start_searcher:
        yield ServiceAddresses(retriever, generator, searcher)
        return
    with run_state_dir("s3-run-") as tmp:  # sweeps the state of runs that were killed
        stack = LocalStack(tmp, detach=False)  # the services die with this process, however it ends
        try:
            if need_retriever and not retriever:
                logger.info("starting a retriever on loopback for %s", index)
                retriever = stack.start_retriever(index, config_path).address
            if not generator:
                logger.info("starting a generator on loopback (%s)", config.generator.model)
                generator = stack.start_generator(config.generator, config_path).address
            if start_searcher:
                logger.info("starting a searcher on loopback (%s)", searcher_model or config.searcher.model)
                searcher = stack.start_searcher(config.searcher, retriever, config_path, searcher_model).address
            yield ServiceAddresses(retriever, generator, searcher)
        finally:
            stack.down()


def check_eval_out(out: str, methods: Sequence[str] = ()) -> None:
    """The output folder of an evaluation can be written: a directory (or creatable), and with several
    methods none of its per-method entries is a file."""
    from s3core.io import check_output_dir

    if not out:
        raise InvalidArgument("--out is required (the folder results are written to)")
    d = check_output_dir(out, "--out")
    if len(methods) > 1:
        for m in methods:
            check_output_dir(d / m, "--out")


def check_index_dir(index: str) -> None:
    if not index:
        raise InvalidArgument("--index is required for methods that retrieve (or give --retriever ADDR)")
    from s3core.retrieval.index import is_index_path

    if not is_index_path(index):
        raise NotFound(f"{index}: not an index directory (no manifest.json, no shards.json, not a Lucene index); "
                       "build one with `s3 index build`")


def _rollout_fn(searcher: Any, job: EvalJob) -> Any:
    from s3core.rpc.convert import KNOB_FIELDS

    # every knob of the job's config (e.g. --preset 8-3-3), at the evaluation temperature
    cfg = job.config.search
    knobs: dict[str, Any] = {name: getattr(cfg, name) for name in KNOB_FIELDS}
    knobs["temperature"] = cfg.temperature_eval

    def rollout(qs: Sequence[Question]) -> list[Any]:
        return list(searcher.rollout(list(qs), knobs, n=1, seed=job.seed, expect_version=0))

    return rollout


def run_eval_job(job: EvalJob) -> list[dict[str, Any]]:
    """Run every method of ``job``; returns the results dicts (also written under ``job.out``)."""
    specs = [get_spec(m) for m in job.methods]  # unknown method → InvalidArgument before any work
    if len(set(job.methods)) != len(job.methods):
        raise InvalidArgument(f"a method is listed twice: {', '.join(job.methods)}")
    if job.k < 1:
        raise InvalidArgument(f"--k must be >= 1, got {job.k}")
    if job.ircot_steps < 1:
        raise InvalidArgument(f"--ircot-steps must be >= 1, got {job.ircot_steps}")
    need_retriever = any(s.needs_retriever for s in specs)
    need_searcher = any(s.needs_searcher for s in specs)
    need_llm = any(s.needs_llm for s in specs)
    if (need_retriever or (need_searcher and not job.searcher)) and not job.retriever:
        if not job.index and not need_retriever:
            raise InvalidArgument("the s3 methods need a searcher: give --searcher ADDR, or --index (or --retriever"
                                  " ADDR) for the searcher started for the run")
        check_index_dir(job.index)
    if need_searcher and not job.searcher:
        require_searcher_installed()
    sets = load_question_sets(job.questions, job.limit, mc=job.mc, sample=job.sample, sample_seed=job.sample_seed)
    check_eval_out(job.out, job.methods)  # before any service starts, not after the whole evaluation

    out = Path(job.out)
    results = []
    clients: list[Any] = []
    with local_services(job.config, index=job.index, retriever=job.retriever, generator=job.generator,
                        need_retriever=need_retriever, config_path=job.config_path, need_searcher=need_searcher,
                        searcher=job.searcher, searcher_model=job.searcher_model) as addrs:
        try:
            gen = GeneratorClient(addrs.generator)
            clients.append(gen)
            gen.wait_ready()
            info = gen.model_info()
            ret = None
            if need_retriever:
                ret = retriever_client(addrs.retriever)
                clients.append(ret)
                ret.wait_ready()
            complete = None
            llm_info = None
            if need_llm:
                llm = gen
                if job.baseline_llm and job.baseline_llm != addrs.generator:
                    llm = GeneratorClient(job.baseline_llm)
                    clients.append(llm)
                    llm.wait_ready()
                llm_info = llm.model_info()
                complete = complete_via_generator(llm)
            rollout = None
            policy: dict[str, Any] = {}
            if need_searcher:
                searcher = SearcherClient(addrs.searcher)
                clients.append(searcher)
                searcher.wait_ready()
                pi = searcher.policy_info()
                policy = {"searcher_model": pi.model, "policy_version": int(pi.version),
                          "checkpoint_path": pi.checkpoint_path}
                rollout = _rollout_fn(searcher, job)

            # a generator that fails UNAVAILABLE (restarting, overloaded) is retried, as the searcher
            # retries the retriever; answering and judging are idempotent
            policy_retry = RetryPolicy(retries=6, backoff_s=0.5, max_backoff_s=8.0)

            def answer(items: Any) -> list[str]:
                return list(call_with_retry(lambda: gen.answer(items), policy_retry, what="generator Answer").answers)

            def judge(items: Any) -> list[bool]:
                return list(call_with_retry(lambda: gen.judge(items), policy_retry, what="generator Judge").correct)

            use_judge = job.config.generator.judge == "model" or job.judge_only
            cache = TrajectoryCache()  # one trajectory per question for every s3 variant of this job
            # the searcher gets up to 32 questions per Rollout, however small the generator's batches
            options = {"ircot_steps": job.ircot_steps, "rollout_batch_size": max(32, job.config.eval.batch_size),
                       "judge_mode": "only" if job.judge_only else "fallback", "mc": job.mc}
            targets = []
            for spec in specs:
                method = spec.name
                cfg: dict[str, Any] = {
                    "method": method, "k": job.k, "limit": job.limit, "index": job.index,
                    "questions": list(job.questions), "generator_model": info.model,
                    "generator_backend": info.backend, "prompt_version": info.prompt_version,
                    "judge": "only" if job.judge_only else job.config.generator.judge, "mc": job.mc,
                    "sample": job.sample, "sample_seed": job.sample_seed, "platform": config_to_dict(job.config),
                }
                if spec.needs_llm and llm_info is not None:
                    cfg.update(baseline_llm=job.baseline_llm or addrs.generator, baseline_llm_model=llm_info.model,
                               baseline_prompt_version=BASELINE_PROMPT_VERSION)
                    if method == "ircot":
                        cfg["ircot_steps"] = job.ircot_steps
                if spec.needs_searcher:
                    cfg.update(searcher=job.searcher or "started for the run", **policy,
                               search=asdict(job.config.search), seed=job.seed)
                target = out if len(job.methods) == 1 else out / method
                targets.append(target)
                fp = _fingerprint(cfg, sets, job)
                if job.restart:
                    (target / PROGRESS_FILE).unlink(missing_ok=True)
                prev = None if job.restart else _finished(target, fp)
                progress = ProgressLog(target / PROGRESS_FILE, fp)
                if prev is not None:  # finished by an earlier run of this same evaluation
                    logger.warning("%s: already evaluated in %s (same questions, models and settings); "
                                   "pass --restart to evaluate again", method, target)
                    _seed_trajectories(cache, progress, sets)
                    progress.close()
                    results.append(prev)
                    continue
                try:
                    outcome = evaluate(
                        sets, method, answer=answer, judge=judge if use_judge else None,
                        search=ret.search if ret is not None and spec.needs_retriever else None,
                        k=job.k, batch_size=job.config.eval.batch_size, show_progress=job.show_progress,
                        complete=complete if spec.needs_llm else None,
                        rollout=rollout if spec.needs_searcher else None,
                        search_config=job.config.search, trajectory_cache=cache, options=options, progress=progress,
                    )
                finally:
                    progress.close()
                if spec.needs_searcher:
                    cfg["trajectory_policy_versions"] = sorted({t.policy_version for _, _, t, _ in outcome.trajectories})
                cfg["fingerprint"] = fp
                results.append(write_outcome(target, outcome, cfg))
        finally:
            for c in clients:
                c.close()
    write_summary(out, results)
    for target in targets:  # the whole job is done: nothing left to resume
        (target / PROGRESS_FILE).unlink(missing_ok=True)
    return results


def _fingerprint(cfg: dict[str, Any], sets: dict[str, list[Question]], job: EvalJob) -> str:
    """What a method's results depend on: its config record, the questions (ids, texts, golds) and the
    index's identity.  A rerun resumes only an evaluation with the same fingerprint."""
    from s3core.retrieval.index import MANIFEST

    index_id: Any = None
    if job.index and (Path(job.index) / MANIFEST).is_file():
        try:
            m = json.loads((Path(job.index) / MANIFEST).read_text(encoding="utf-8"))
            index_id = [m.get("corpus_sha256"), m.get("created_at"), m.get("params")]
        except (OSError, ValueError):
            index_id = None
    qs = {name: fingerprint([[q.id, q.question, list(q.golden_answers)] for q in v]) for name, v in sets.items()}
    return fingerprint({"config": cfg, "questions": qs, "index": index_id, "batch_size": job.config.eval.batch_size})


def _finished(target: Path, fp: str) -> dict[str, Any] | None:
    try:
        res = json.loads((target / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(res, dict) and isinstance(res.get("config"), dict) and res["config"].get("fingerprint") == fp \
            and (target / "predictions.jsonl").is_file():
        return res
    return None


def _seed_trajectories(cache: TrajectoryCache, progress: ProgressLog, sets: dict[str, list[Question]]) -> None:
    """The episodes of an s3 variant finished earlier, for the variants still to run (one per question)."""
    for name, batches in progress.batches.items():
        by_id = {q.id: q for q in sets.get(name, [])}
        for _, trajs, _ in batches:
            for qid, t, _ in trajs:
                if qid in by_id:
                    cache.put(by_id[qid], t)
