"""A training run (`s3 train`, the controller's train jobs): the s3 RL loop over the services.

Each step: a batch of (filtered) training questions → the searcher service's rollouts at the
training temperature (``n = rl.group_size`` per question for GRPO), pinned to the current policy
version → the generator answers from each trajectory's s3 context → GenAcc → reward against the
cached naive-RAG baseline (spec §5) → the learner's PPO/GRPO update → the new policy version
published to the searcher (``LoadPolicy`` from the shared checkpoint folder) → logs.

Set-up, once: the training set is the questions of ``train.questions``, minus those naive RAG
already answers and yes/no golds (``train.filter``; baselines missing from the cache are computed
and cached first), written to ``<checkpoint_dir>/train_questions.jsonl`` and reused on resume.
The learner is in process (``train.learner`` empty) or a learner service; either way it resumes
from its newest valid checkpoint, whose run state holds the data cursor, so ``--resume`` continues
exactly where the run stopped.  With ``train.backend: ray`` the update runs data parallel in Ray Train
workers whose rank 0 runs this same loop (:mod:`s3core.train.ray_backend`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3core.config import Config, config_to_dict
from s3core.errors import FailedPrecondition, InvalidArgument, S3Error
from s3core.io import write_json
from s3core.types import Question

logger = logging.getLogger(__name__)

__all__ = ["TrainJob", "TrainSummary", "drive", "run_training"]

TRAIN_FILE = "train_questions.jsonl"
ProgressFn = Callable[[float, str], None]


@dataclass
class TrainJob:
    config: Config
    config_path: str = ""
    index: str = ""  # retriever index, when a retriever is started for the run
    resume: bool = True  # continue from the newest valid checkpoint in train.checkpoint_dir
    model: str = ""  # initial policy ("" = learner.model, else searcher.model)
    show_progress: bool = True
    redis_url: str = ""  # "" = redis.url, else the local one (started for the run when none answers)
    progress: ProgressFn | None = None  # (fraction done, message) after each step


@dataclass
class TrainSummary:
    steps: int = 0  # last completed step
    start_step: int = 0  # step the run resumed from
    version: int = 0
    train_questions: int = 0
    filtered_from: int = 0
    checkpoint_dir: str = ""
    last_checkpoint: str = ""
    policy_path: str = ""
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl validation rows, in order
    best: dict[str, Any] = field(default_factory=dict)  # {step, version, val_gbr, ci95, policy_path} ({} = none)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- learners: in process or a service --------------------------------------------------------------

class _LocalLearner:
    """The learner in this process.  ``on_update(samples, step, run_state, checkpoint, metric)`` runs
    before each update (the Ray backend's rank 0 sends the step to the other ranks there)."""

    def __init__(self, core: Any, on_update: Callable[..., None] | None = None) -> None:
        self.core = core
        self.on_update = on_update

    def status(self) -> dict[str, Any]:
        return self.core.status()

    def update(self, scored: Sequence[Any], step: int, run_state: dict[str, Any], checkpoint: bool,
               metric: float | None, driver_stats: dict[str, float]) -> dict[str, Any]:
        from s3core.train.samples import to_sample

        samples = [to_sample(s, i) for i, s in enumerate(scored)]
        if self.on_update is not None:
            self.on_update(samples, step, run_state, checkpoint, metric)
        r = self.core.update(samples, step, run_state, checkpoint=checkpoint, metric=metric)
        return {"step": r.step, "version": r.version, "stats": dict(r.stats), "checkpoint_path": r.checkpoint_path,
                "policy_path": r.policy_path}


class _RemoteLearner:
    def __init__(self, client: Any) -> None:
        self.client = client

    def status(self) -> dict[str, Any]:
        s = self.client.status()
        return {"step": s.step, "policy_version": s.policy_version, "algorithm": s.algorithm,
                "last_checkpoint": s.last_checkpoint, "run_state_json": s.run_state_json, "model": s.model,
                "policy_path": s.policy_path}

    def update(self, scored: Sequence[Any], step: int, run_state: dict[str, Any], checkpoint: bool,
               metric: float | None, driver_stats: dict[str, float]) -> dict[str, Any]:
        # the client converts the domain records to their wire form (s3core.rpc.convert_learner)
        r = self.client.update(list(scored), step, json.dumps(run_state), checkpoint=checkpoint,
                               metric=metric, driver_stats=driver_stats)
        return {"step": r.step, "version": r.policy_version, "stats": dict(r.stats),
                "checkpoint_path": r.checkpoint_path, "policy_path": r.policy_path}


# --- set-up helpers ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _baseline_cache(cfg: Config, url: str) -> Iterator[Any]:
    """The Redis baseline cache; with no URL configured and none answering locally, a redis-server is
    started for the run (its data kept in ``state_dir/redis``, so baselines outlive the run)."""
    from s3core.cache.baseline import BaselineCache, redis_url
    from s3core.errors import Unavailable
    from s3core.runtime.local import LocalStack

    target = redis_url(url or cfg.redis.url, cfg.redis.port)
    try:
        cache = BaselineCache.from_url(target)
        cache.count()
        yield cache
        return
    except Unavailable:
        if url or cfg.redis.url:
            raise
    stack = LocalStack(Path(cfg.state_dir) / "train-redis", detach=False)
    info = stack.start_redis(cfg.redis.port)
    logger.info("started redis-server on port %d for the run", info.grpc_port)
    try:
        yield BaselineCache.from_url(redis_url("", info.grpc_port))
    finally:
        stack.down()


def _training_set(cfg: Config, ckdir: Path, run_state: dict[str, Any], ret: Any, gen: Any, cache: Any, setup: Any,
                  show_progress: bool) -> tuple[Path, int]:
    """The training questions file (built once, reused on resume) and how many questions it came from."""
    from s3core.data import load_questions
    from s3core.eval.job import load_question_sets
    from s3core.eval.precompute import filter_training_set, precompute
    from s3core.io import write_jsonl

    path = ckdir / TRAIN_FILE
    if run_state.get("train_file_sha256"):
        if not path.is_file():
            raise FailedPrecondition(f"{path} is missing; the checkpoint's run was trained on it")
        if _sha256(path) != run_state["train_file_sha256"]:
            raise FailedPrecondition(f"{path} changed since the checkpoint was written (sha256 differs)")
        return path, int(run_state.get("filtered_from", 0))
    if not cfg.train.questions:
        raise InvalidArgument("train.questions is empty: give the training question files (--questions)")
    sets = load_question_sets(cfg.train.questions)
    total = sum(len(v) for v in sets.values())
    if cfg.train.filter:
        precompute(sets, ret, gen, cache, k=setup.k, judge=setup.judge, batch_size=cfg.eval.batch_size,
                   show_progress=show_progress)
        summary = filter_training_set(sets, cache, setup.key_fn(), path)
        logger.info("training set: kept %d of %d questions (%d answered by naive RAG, %d yes/no)", summary.kept,
                    summary.total, summary.dropped_rag_correct, summary.dropped_yes_no)
        if summary.kept == 0:
            raise FailedPrecondition(f"no training questions left: naive RAG answers all {total} (or their golds "
                                     "are yes/no); add harder questions or set train.filter: false")
    else:
        from s3core.cache.keys import SOURCE_DATASET

        rows = [{"id": f"{ds}/{q.id}", "question": q.question, "golden_answers": list(q.golden_answers),
                 "metadata": {**(q.metadata or {}), SOURCE_DATASET: ds, "source_id": q.id}}
                for ds, qs in sets.items() for q in qs]
        write_jsonl(path, rows)
    load_questions(path)  # fails here, not mid-run, on anything odd
    return path, total


def _score_contexts(trajs: Sequence[Any], gen: Any, judge: bool, batch: int = 64) -> list[float]:
    """GenAcc (0/1) of the generator answering from each trajectory's s3 context (validation scores
    with the same function)."""
    from s3core.train.validate import score_contexts

    return score_contexts(trajs, gen, judge, batch)


def _informative_groups(scored: Sequence[Any], group: int) -> list[Any]:
    """The trajectories of the groups (``group`` consecutive ones, one question) whose rewards are
    not all equal: the only ones with a non-zero GRPO advantage."""
    out: list[Any] = []
    for i in range(0, len(scored), group):
        g = scored[i: i + group]
        if max(s.reward for s in g) > min(s.reward for s in g):
            out.extend(g)
    return out


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


# --- the loop -----------------------------------------------------------------------------------------

def run_training(job: TrainJob) -> TrainSummary:
    """Run (or resume) the training job; ``train.backend: ray`` runs the update data parallel in Ray
    Train workers (:mod:`s3core.train.ray_backend`), whose rank 0 drives the same loop."""
    tc = job.config.train
    if tc.backend == "ray":
        if tc.learner:
            raise InvalidArgument("train.backend 'ray' runs the update in Ray Train workers; train.learner (a learner "
                                  "service) is the other way to move it out of this process: set one of them")
        from s3core.train.ray_backend import run_with_ray

        return run_with_ray(job)
    return drive(job)


def refuse_fresh_run_over_checkpoints(ckdir: Path, resume: bool) -> None:
    from s3core.rl.checkpoint import CheckpointManager

    if not resume and CheckpointManager(ckdir).checkpoints():
        raise FailedPrecondition(f"{ckdir} already holds checkpoints: resume that run (--resume), or "
                                 "choose another checkpoint dir")


def drive(job: TrainJob, learner: Any = None, devices: int = 1) -> TrainSummary:
    """The loop itself, with the learner of ``train.learner`` (a service), ``learner`` when given
    (the Ray backend's rank 0) or one in this process.  ``devices``: the update's devices (tokens/s)."""
    from tqdm import tqdm

    from s3core.data import load_questions
    from s3core.eval.job import check_index_dir, local_services
    from s3core.eval.precompute import make_compute_fn, resolve_setup
    from s3core.reward import RewardComputer
    from s3core.rpc.clients import GeneratorClient, LearnerClient, SearcherClient, retriever_client
    from s3core.rpc.convert import KNOB_FIELDS
    from s3core.train import metrics as train_metrics
    from s3core.train.data import TrainData
    from s3core.train.log import TrainLogger, plot_rewards, plot_validation
    from s3core.train.samples import ScoredTrajectory

    cfg, tc = job.config, job.config.train
    t_run = time.perf_counter()
    ckdir = Path(tc.checkpoint_dir).expanduser().resolve()
    ckdir.mkdir(parents=True, exist_ok=True)
    model = job.model or cfg.learner.model or cfg.searcher.model
    if not (tc.retriever or tc.searcher):
        check_index_dir(job.index or cfg.retriever.index)
    for p in tc.questions:  # bad paths fail before any service starts
        if not Path(p).is_file():
            raise InvalidArgument(f"train.questions: {p}: no such file")
    for p in tc.val_questions:
        if not Path(p).is_file():
            raise InvalidArgument(f"train.val_questions: {p}: no such file")
    if tc.val_questions and tc.questions:  # held out from the training files: refused before any work
        from s3core.eval.job import load_question_sets
        from s3core.train.validate import check_no_overlap

        check_no_overlap(load_question_sets(tc.val_questions, limit=tc.val_limit),
                         [q for qs in load_question_sets(tc.questions).values() for q in qs],
                         "the training set (train.questions)")
    group = cfg.rl.group_size if cfg.rl.algorithm == "grpo" else 1
    summary = TrainSummary(checkpoint_dir=str(ckdir))

    with contextlib.ExitStack() as stack:
        cache = stack.enter_context(_baseline_cache(cfg, job.redis_url))
        if tc.learner:
            lclient = LearnerClient(tc.learner, timeout=tc.rollout_timeout_s)
            stack.callback(lclient.close)
            lclient.wait_ready()
            learner = _RemoteLearner(lclient)
        elif learner is None:
            from s3core.train.learner_core import LearnerCore

            refuse_fresh_run_over_checkpoints(ckdir, job.resume)
            logger.info("loading the learner (%s, %s) in process", model, cfg.rl.algorithm)
            learner = _LocalLearner(LearnerCore(cfg, _resolve_model(model), ckdir, resume=job.resume))
        status = learner.status()
        if status["step"] and not job.resume:
            raise FailedPrecondition(f"the learner is at step {status['step']}; a fresh run needs an empty "
                                     "checkpoint dir / a fresh learner (or --resume)")
        run_state = json.loads(status["run_state_json"] or "{}")
        start_step, version = int(status["step"]), int(status["policy_version"])
        summary.start_step = summary.steps = start_step
        summary.version = version
        val = _Validation(cfg, ckdir, run_state, start_step, model) if tc.val_questions else None
        if start_step >= tc.steps and (val is None or not val.pending(start_step)):
            logger.info("nothing to do: the run is at step %d of %d", start_step, tc.steps)
            summary.last_checkpoint, summary.policy_path = status["last_checkpoint"], status["policy_path"]
            if val is not None:
                summary.validations, summary.best = val.rows(), val.best_summary()
            return summary

        addrs = stack.enter_context(local_services(
            cfg, index=job.index or cfg.retriever.index, retriever=tc.retriever, generator=tc.generator,
            config_path=job.config_path, need_searcher=True, searcher=tc.searcher, searcher_model=model))
        ret = retriever_client(addrs.retriever)
        gen = GeneratorClient(addrs.generator)
        searcher = SearcherClient(addrs.searcher, timeout=tc.rollout_timeout_s)
        for c in (ret, gen, searcher):
            stack.callback(c.close)
            c.wait_ready()

        judge = cfg.generator.judge == "model"
        setup = resolve_setup(ret, gen, cfg.search.initial_k, judge)
        train_file, total = _training_set(cfg, ckdir, run_state, ret, gen, cache, setup, job.show_progress)
        questions = load_questions(train_file)
        data = TrainData(questions, seed=tc.seed)
        data.restore(run_state.get("data") or {})
        summary.train_questions, summary.filtered_from = len(questions), total
        base_state = {"train_file": str(train_file), "train_file_sha256": _sha256(train_file),
                      "filtered_from": total, "model": model}
        rewards = RewardComputer.from_config(cfg.reward, cache, setup.key_fn(),
                                             compute=make_compute_fn(ret, gen, setup, cfg.eval.batch_size))
        if val is not None:  # held out from training (refused otherwise), baselines precomputed, never filtered
            val.prepare(questions, ret, gen, cache, setup, job.show_progress)

        # the searcher must serve the learner's current policy before the first rollout
        served = searcher.policy_info()
        if version > 0 and served.version != version:
            searcher.load_policy(status["policy_path"], version)
        elif version == 0 and served.version != 0:
            raise FailedPrecondition(f"the searcher serves policy version {served.version}, but the learner starts "
                                     "from version 0: restart the searcher with the initial model")
        knobs: dict[str, Any] = {name: getattr(cfg.search, name) for name in KNOB_FIELDS}
        knobs["temperature"] = cfg.search.temperature_train

        tlog = TrainLogger(ckdir, tb_dir=tc.log_dir, wandb=tc.wandb, wandb_project=tc.wandb_project,
                           config=config_to_dict(cfg), start_step=start_step,
                           keep_start_validation=val is None or not val.pending(start_step))
        stack.callback(tlog.close)
        bar = tqdm(total=tc.steps, initial=start_step, desc=f"s3 train ({cfg.rl.algorithm})", unit="step",
                   disable=not job.show_progress)
        stack.callback(bar.close)

        def validate(step: int, policy_path: str) -> None:
            if val is None or not val.pending(step):
                return
            res = val.run(searcher, gen, step, version, policy_path or _resolve_model(model), judge)
            tlog.log_validation(step, {**val.row(res), "val_is_best": res.is_best})
            best = val.best.best
            train_metrics.publish_validation(step, res.gbr, res.s3_genacc, res.naive_genacc, res.n, res.ci95,
                                             None if best is None else best.step, None if best is None else best.gbr)
            logger.info("validation of step %d (version %d): GBR %+.3f [%+.3f, %+.3f], s3 GenAcc %.3f, naive %.3f, "
                        "n=%d", step, version, res.gbr, res.ci95[0], res.ci95[1], res.s3_genacc, res.naive_genacc,
                        res.n)
            if job.progress is not None:
                job.progress(step / tc.steps, f"validation of step {step}: GBR {res.gbr:+.3f}")

        # the policy the run (re)starts from: before training, or the resumed step's (a crash lost it)
        validate(start_step, status["policy_path"] if version > 0 else "")
        def rollout(batch: list[Question], seed: int) -> tuple[list[Any], list[Question], float]:
            """``group`` trajectories per question of ``batch`` under the current policy (checked), and
            the seconds it took."""
            t = time.perf_counter()
            trajs = searcher.rollout(batch, knobs, n=group, seed=seed, expect_version=version)
            bad = [t for t in trajs if t.policy_version != version]
            if bad:
                raise FailedPrecondition(f"rollout mixed policy versions: expected {version}, got "
                                         f"{sorted({t.policy_version for t in bad})}")
            if len(trajs) != len(batch) * group:
                raise S3Error(f"searcher returned {len(trajs)} trajectories for {len(batch)} questions x {group}")
            # the batch's own Question objects: their metadata (the source dataset) keys the baselines
            qs = [batch[i // group] for i in range(len(trajs))]
            for tr, q in zip(trajs, qs):
                if tr.question.id != q.id:
                    raise S3Error(f"searcher returned trajectories out of order ({tr.question.id!r} for {q.id!r})")
                tr.question = q
            return trajs, qs, time.perf_counter() - t

        def score(trajs: list[Any], qs: list[Question]) -> tuple[list[Any], float]:
            t = time.perf_counter()
            accs = _score_contexts(trajs, gen, judge)
            rs = rewards.rewards(qs, accs)
            bases = [b.acc for b in rewards.baselines(qs)] if rewards.mode != "acc" else [0.0] * len(qs)
            return ([ScoredTrajectory(t, r, a - b, a, b) for t, r, a, b in zip(trajs, rs, accs, bases)],
                    time.perf_counter() - t)

        filtering = cfg.rl.filter_groups and group > 1
        for step in range(start_step + 1, tc.steps + 1):
            t0 = time.perf_counter()
            seed = tc.seed * 1_000_003 + step
            trajs, qs, rollout_s = rollout(data.next_batch(tc.batch_size), seed)
            scored, reward_s = score(trajs, qs)
            rounds, seen_groups = 1, len(trajs) // group
            rolled = scored  # every trajectory of the step: the logged rewards are the policy's, unfiltered
            informative = len(_informative_groups(scored, group)) // group if group > 1 else 0
            if filtering:
                # DAPO's dynamic sampling: only groups whose rewards differ carry an advantage; roll out
                # more questions until batch_size such groups are in hand (or the rounds run out)
                rollouts, kept = list(scored), _informative_groups(scored, group)
                while len(kept) < tc.batch_size * group and rounds < cfg.rl.filter_max_rounds:
                    more, more_qs, dt = rollout(data.next_batch(tc.batch_size), seed + 104_729 * rounds)
                    more_scored, dr = score(more, more_qs)
                    rollout_s, reward_s, rounds = rollout_s + dt, reward_s + dr, rounds + 1
                    seen_groups += len(more) // group
                    rollouts += more_scored
                    kept += _informative_groups(more_scored, group)
                informative = len(kept) // group
                # no informative group at all: the whole batch goes (zero advantages: the update is a no-op
                # for the policy loss, but the step, its statistics and its checkpoint stay regular)
                scored, rolled = kept[: tc.batch_size * group] or rollouts[: tc.batch_size * group], rollouts
                trajs = [s.trajectory for s in scored]
            rs = [s.reward for s in rolled]
            accs = [s.context_acc for s in rolled]
            bases = [s.baseline_acc for s in rolled]
            t2 = time.perf_counter()
            run_state = {**base_state, "data": data.state(), "step": step}
            if val is not None:  # the validations of the steps before this one (this step's comes after it)
                run_state["validation"] = val.state()
            checkpoint = step % tc.save_every == 0 or step == tc.steps
            driver = {"rollout_seconds": rollout_s, "reward_seconds": reward_s,
                      **{f"searcher_{k}": v for k, v in searcher.last_stats.items()}}
            # no metric: the best record is the driver's best validation (best.json), not a batch reward
            res = learner.update(scored, step, run_state, checkpoint, None, driver)
            t3 = time.perf_counter()
            if val is not None and res["checkpoint_path"]:
                val.checkpointed()
            version = int(res["version"])
            searcher.load_policy(res["policy_path"], version)
            t4 = time.perf_counter()
            st = res["stats"]
            step_s = t4 - t0
            row: dict[str, Any] = {
                "version": version, "trajectories": len(rolled), "trajectories_updated": len(scored),
                "rollout_rounds": rounds,
                "groups_seen": seen_groups, "groups_informative": informative,
                "reward_mean": _mean(rs), "gbr_mean": _mean([s.gbr for s in rolled]),
                "context_acc_mean": _mean(accs), "baseline_acc_mean": _mean(bases),
                "reward_share_neg": _mean([1.0 if r < 0 else 0.0 for r in rs]),
                "reward_share_zero": _mean([1.0 if r == 0 else 0.0 for r in rs]),
                "reward_share_pos": _mean([1.0 if r > 0 else 0.0 for r in rs]),
                "rollout_seconds": rollout_s, "reward_seconds": reward_s, "update_seconds": t3 - t2,
                "publish_seconds": t4 - t3, "step_seconds": step_s,
                # verl's throughput: tokens / (step time x devices)
                "tokens_per_second": float(st.get("tokens", 0.0)) / (step_s * devices) if step_s > 0 else 0.0,
            }
            for k in ("policy_loss", "value_loss", "kl", "entropy", "clip_fraction", "value_clip_fraction",
                      "grad_norm", "value_grad_norm", "approx_kl", "skipped_updates", "reward_std",
                      "advantage_mean", "lr", "response_tokens", "tokens"):
                if k in st and math.isfinite(float(st[k])):
                    row[k] = float(st[k])
            tlog.log(step, row)
            if not tc.learner:
                train_metrics.publish(step, version, row, trajectories=len(rolled))
            else:  # the learner service exports its own phases; publishing (LoadPolicy) is the driver's
                train_metrics.PHASE_SECONDS.labels("publish").set(row["publish_seconds"])
            summary.history.append({"step": step, **row})
            summary.steps, summary.version = step, version
            summary.last_checkpoint = res["checkpoint_path"] or summary.last_checkpoint
            summary.policy_path = res["policy_path"]
            bar.set_postfix(reward=f"{row['reward_mean']:+.3f}", gbr=f"{row['gbr_mean']:+.3f}",
                            kl=f"{row.get('kl', 0.0):.4f}")
            bar.update(1)
            if job.progress is not None:
                job.progress(step / tc.steps, f"step {step}/{tc.steps}: reward {row['reward_mean']:+.3f}")
            validate(step, res["policy_path"])
        summary.seconds = time.perf_counter() - t_run
        plot_rewards(ckdir / "metrics.jsonl", ckdir / "reward_curve.png",
                     title=f"s3 {cfg.rl.algorithm} on {', '.join(Path(p).name for p in tc.questions) or 'resumed set'}")
        if val is not None:
            summary.validations, summary.best = val.rows(), val.best_summary()
            plot_validation(ckdir / "metrics.jsonl", ckdir / "val_curve.png",
                            title=f"s3 {cfg.rl.algorithm}: held-out validation "
                                  f"({', '.join(Path(p).name for p in tc.val_questions)})")
        write_json(ckdir / "train_summary.json", summary.to_json())
    return summary


class _Validation:
    """The driver's validation state: the held-out questions, what was validated (``history``, also in
    the run state of every update so a resumed run knows it) and the best policy (:class:`BestPolicy`).

    The validation after step ``s`` runs once the learner has published version ``s``, so it reaches the
    run state with step ``s + 1``'s update; a run resumed at step ``k`` therefore takes step ``k``'s
    validation from ``metrics.jsonl`` when it was logged (same question set, same policy version), else
    runs it again before going on."""

    def __init__(self, cfg: Config, ckdir: Path, run_state: dict[str, Any], start_step: int, model: str) -> None:
        from s3core.eval.job import load_question_sets
        from s3core.train.log import VALIDATION, read_metrics
        from s3core.train.validate import BestPolicy, ValidationResult, best_of

        self.cfg, self.tc = cfg, cfg.train
        self.sets = load_question_sets(self.tc.val_questions, limit=self.tc.val_limit)
        self.questions = [q if q.dataset else _with_dataset(q, ds) for ds, qs in self.sets.items() for q in qs]
        h = hashlib.sha256()
        h.update(json.dumps([[q.dataset, q.id, q.question, list(q.golden_answers)] for q in self.questions]).encode())
        h.update(json.dumps([cfg.search.temperature_eval, model]).encode())
        self.fingerprint = h.hexdigest()
        saved = run_state.get("validation") or {}
        if saved.get("history") and saved.get("fingerprint") != self.fingerprint:
            raise FailedPrecondition("train.val_questions / val_limit / search.temperature_eval / the initial model changed since the "
                                     "checkpoint was written: its validations (and best.json) are of another set; "
                                     "resume with the same validation set or start a new run")
        self.history = [ValidationResult.from_row(r) for r in saved.get("history") or []]
        done = {r.step for r in self.history}
        self.best = BestPolicy(ckdir)
        for r in read_metrics(ckdir / "metrics.jsonl"):
            if (r.get("kind") == VALIDATION and int(r.get("step", -1)) == start_step and start_step not in done
                    and int(r.get("version", -1)) == start_step and r.get("val_fingerprint") == self.fingerprint):
                res = ValidationResult.from_row(r)
                b = best_of([*self.history, res])
                if b is res and not (self.best.policy_dir(res.step) / "config.json").is_file():
                    continue  # it would be the best but its copy is gone: validate the step again
                self.history.append(res)
                done.add(start_step)
        self.history.sort(key=lambda r: r.step)
        self.best.reconcile(self.history, [r for r in self.history if r.step < start_step])

    def pending(self, step: int) -> bool:
        if any(r.step == step for r in self.history):
            return False
        if step == 0:
            return self.tc.val_before_train
        return (self.tc.val_every > 0 and step % self.tc.val_every == 0) or \
            (step == self.tc.steps and self.tc.val_after_train)

    def prepare(self, train_questions: Sequence[Question], ret: Any, gen: Any, cache: Any, setup: Any,
                show_progress: bool) -> None:
        from s3core.eval.precompute import precompute
        from s3core.train.validate import check_no_overlap

        check_no_overlap(self.sets, train_questions, "the training set (train.questions)")
        precompute(self.sets, ret, gen, cache, k=setup.k, judge=setup.judge, batch_size=self.cfg.eval.batch_size,
                   show_progress=show_progress, setup=setup)
        self.cache, self.key_fn = cache, setup.key_fn()

    def run(self, searcher: Any, gen: Any, step: int, version: int, policy_path: str, judge: bool) -> Any:
        from s3core.rpc.convert import KNOB_FIELDS
        from s3core.train.validate import run_validation

        knobs: dict[str, Any] = {name: getattr(self.cfg.search, name) for name in KNOB_FIELDS}
        knobs["temperature"] = self.cfg.search.temperature_eval
        res = run_validation(self.questions, searcher, gen, self.cache, self.key_fn, knobs, step=step,
                             version=version, judge=judge, seed=self.tc.seed * 1_000_003 + 7_919,
                             batch_size=self.tc.val_batch_size, ci_seed=self.tc.seed)
        res.is_best = self.best.offer(res, policy_path)  # copied and recorded before the row is logged
        self.history.append(res)
        return res

    def row(self, r: Any) -> dict[str, Any]:
        """A validation's ``metrics.jsonl`` fields (besides ``step`` and ``kind``)."""
        return {**r.row(), "val_fingerprint": self.fingerprint}

    def state(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "history": [{"step": r.step, **r.row()} for r in self.history]}

    def checkpointed(self) -> None:
        """The update just checkpointed :meth:`state` (sent with it)."""
        self.best.checkpointed(list(self.history))

    def rows(self) -> list[dict[str, Any]]:
        return [{"step": r.step, "kind": "validation", **self.row(r)} for r in self.history]

    def best_summary(self) -> dict[str, Any]:
        return self.best.summary()


def _with_dataset(q: Question, ds: str) -> Question:
    from dataclasses import replace

    return replace(q, dataset=ds)


def _resolve_model(model: str) -> str:
    from s3core.generation.models import resolve_model

    return resolve_model(model)
