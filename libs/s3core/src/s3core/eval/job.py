"""An evaluation job end to end: services (given by address, or started on loopback for the run),
clients, the evaluation loop, and the result files.  Used by `s3 eval`, `s3 demo` and, later, the
controller's eval jobs."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from s3core.config import Config, config_to_dict
from s3core.data import load_questions
from s3core.errors import InvalidArgument, NotFound
from s3core.eval.methods import NEEDS_RETRIEVER, get_method
from s3core.eval.report import markdown_table, write_outcome
from s3core.eval.runner import evaluate
from s3core.rpc.clients import GeneratorClient, RetrieverClient
from s3core.runtime.local import LocalStack
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


def load_question_sets(paths: Sequence[str], limit: int = 0) -> dict[str, list[Question]]:
    sets: dict[str, list[Question]] = {}
    for p in paths:
        qs = load_questions(p, limit=limit or None)
        name = qs[0].dataset if qs else Path(p).name.split(".", 1)[0]
        if name in sets:
            raise InvalidArgument(f"two question files give the dataset name {name!r}: rename one")
        sets[name] = qs
    return sets


@contextlib.contextmanager
def local_services(config: Config, *, index: str = "", retriever: str = "", generator: str = "",
                   need_retriever: bool = True, config_path: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(retriever_address, generator_address)``: the given addresses, and for each one not
    given a service started on loopback for the duration of the block (stopped afterwards)."""
    if generator and (retriever or not need_retriever):
        yield retriever, generator
        return
    with tempfile.TemporaryDirectory(prefix="s3-run-") as tmp:
        stack = LocalStack(tmp, detach=False)
        try:
            cfg_args = ["--config", config_path] if config_path else []
            if need_retriever and not retriever:
                logger.info("starting a retriever on loopback for %s", index)
                retriever = stack.start_service("retriever", "s3_retriever", [*cfg_args, "--index", index]).address
            if not generator:
                g = config.generator
                logger.info("starting a generator on loopback (%s)", g.model)
                gen_args = [*cfg_args, "--backend", g.backend, "--model", g.model]
                if g.base_url:
                    gen_args += ["--base-url", g.base_url]
                generator = stack.start_service("generator", "s3_generator", gen_args).address
            yield retriever, generator
        finally:
            stack.down()


def check_index_dir(index: str) -> None:
    if not index:
        raise InvalidArgument("--index is required for methods that retrieve (or give --retriever ADDR)")
    if not (Path(index) / "manifest.json").is_file():
        raise NotFound(f"{index}: not an index directory (no manifest.json); build one with `s3 index build`")


def run_eval_job(job: EvalJob) -> list[dict[str, Any]]:
    """Run every method of ``job``; returns the results dicts (also written under ``job.out``)."""
    for m in job.methods:
        get_method(m)  # unknown method → InvalidArgument before any work
    if job.k < 1:
        raise InvalidArgument(f"--k must be >= 1, got {job.k}")
    need_retriever = any(NEEDS_RETRIEVER[m] for m in job.methods)
    if need_retriever and not job.retriever:
        check_index_dir(job.index)
    sets = load_question_sets(job.questions, job.limit)

    out = Path(job.out)
    results = []
    with local_services(job.config, index=job.index, retriever=job.retriever, generator=job.generator,
                        need_retriever=need_retriever, config_path=job.config_path) as (ret_addr, gen_addr):
        gen = GeneratorClient(gen_addr)
        gen.wait_ready()
        info = gen.model_info()
        ret = None
        if need_retriever:
            ret = RetrieverClient(ret_addr)
            ret.wait_ready()

        def answer(items: Any) -> list[str]:
            return list(gen.answer(items).answers)

        def judge(items: Any) -> list[bool]:
            return list(gen.judge(items).correct)

        use_judge = job.config.generator.judge == "model"
        for method in job.methods:
            outcome = evaluate(
                sets, method, answer=answer, judge=judge if use_judge else None,
                search=ret.search if ret is not None and NEEDS_RETRIEVER[method] else None,
                k=job.k, batch_size=job.config.eval.batch_size, show_progress=job.show_progress,
            )
            cfg = {
                "method": method, "k": job.k, "limit": job.limit, "index": job.index,
                "questions": list(job.questions), "generator_model": info.model,
                "generator_backend": info.backend, "prompt_version": info.prompt_version,
                "judge": job.config.generator.judge, "platform": config_to_dict(job.config),
            }
            target = out if len(job.methods) == 1 else out / method
            results.append(write_outcome(target, outcome, cfg))
        gen.close()
        if ret is not None:
            ret.close()
    if len(job.methods) > 1:
        from s3core.io import atomic_open

        with atomic_open(out / "results.md") as fh:
            fh.write(markdown_table(results))
    return results
