"""``train.backend: ray``: the RL update data parallel over Ray Train workers.

:func:`run_with_ray` connects to ``train.ray_address`` (or ``RAY_ADDRESS``, as inside a KubeRay
``RayJob``; with neither it starts a local Ray) and runs a :class:`ray.train.torch.TorchTrainer` of
``train.num_workers`` workers (``train.use_gpu``: one GPU each).  Ray Train initialises
``torch.distributed`` across them (gloo on CPU, NCCL on GPU); then

* every rank builds the same :class:`~s3core.train.learner_core.LearnerCore` (policy, critic,
  reference, optimisers).  Rank 0 resumes from the newest valid checkpoint (``--resume``) and tells
  the others which one, so all load the same; rank 0's trainable weights are then broadcast to all;
* rank 0 runs the driver loop of :func:`s3core.train.run.drive` exactly as a local run does --
  services, rollouts, rewards, publishing to the searcher, logs, checkpoints (only rank 0 writes);
* at each update rank 0 broadcasts the step's samples, step number, run state and checkpoint flag
  (``broadcast_object_list`` over a gloo control group with a long timeout: the other ranks wait
  there while rank 0 rolls out) and all ranks run the step together
  (:mod:`s3core.rl.distributed`: each takes its share of every mini-batch, gradients are summed);
* at the end rank 0 hands the :class:`~s3core.train.run.TrainSummary` (or its error) to the caller
  through a small actor, which also relays ``TrainJob.progress``.

Ray is imported here only, when this backend is selected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from s3core.errors import S3Error

logger = logging.getLogger(__name__)

__all__ = ["run_with_ray"]

# the other ranks wait on the control group while rank 0 prepares the training set and rolls out;
# a dead rank 0 is noticed by Ray Train (it tears the worker group down), not by this timeout
CONTROL_TIMEOUT = timedelta(days=7)


class _Mailbox:
    """Rank 0 -> caller: progress while the run goes, then the summary or the error (a Ray actor)."""

    def __init__(self) -> None:
        self.progress: tuple[float, str] | None = None
        self.outcome: tuple[str, Any] | None = None

    def set_progress(self, fraction: float, message: str) -> None:
        self.progress = (fraction, message)

    def get_progress(self) -> tuple[float, str] | None:
        return self.progress

    def put(self, kind: str, value: Any) -> None:
        self.outcome = (kind, value)

    def get(self) -> tuple[str, Any] | None:
        return self.outcome


def run_with_ray(job: Any) -> Any:
    """Run ``job`` (a :class:`~s3core.train.run.TrainJob` with ``train.backend: ray``) on Ray Train."""
    from s3core.train.run import TrainSummary, refuse_fresh_run_over_checkpoints

    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:  # pinned in requirements.txt; a slim image may lack it
        raise S3Error(f"train.backend 'ray' needs Ray Train (pip install 'ray[train]'): {e}") from None

    cfg, tc = job.config, job.config.train
    ckdir = Path(tc.checkpoint_dir).expanduser().resolve()
    ckdir.mkdir(parents=True, exist_ok=True)
    refuse_fresh_run_over_checkpoints(ckdir, job.resume)  # before any Ray work
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = False
    if not ray.is_initialized():
        address = tc.ray_address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:  # a local Ray on this machine: enough logical CPUs for the workers
            ray.init(num_cpus=max(os.cpu_count() or 1, tc.num_workers), include_dashboard=False,
                     logging_level=logging.WARNING)
            logger.info("started a local Ray for %d training workers", tc.num_workers)
        started = True
    try:
        box = ray.remote(num_cpus=0)(_Mailbox).remote()
        worker_job = dataclasses.replace(job, progress=None)  # the caller's callback stays here (relayed)
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"job": worker_job, "mailbox": box, "cwd": os.getcwd()},
            scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu),
            run_config=RunConfig(name=f"s3-train-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                 storage_path=str(ckdir / "ray")),
        )
        logger.info("Ray Train: %d workers (%s), %s", tc.num_workers, "GPU" if tc.use_gpu else "CPU",
                    cfg.rl.algorithm)
        with _relay_progress(job.progress, box):
            try:
                trainer.fit()
                failure: BaseException | None = None
            except Exception as e:  # noqa: BLE001 - rank 0's own error, when it sent one, says more
                failure = e
        outcome = ray.get(box.get.remote())
        if outcome is not None and outcome[0] == "error":
            raise _unpickle_error(outcome[1]) from failure
        if failure is not None:
            raise S3Error(f"the Ray Train run failed: {failure}") from failure
        if outcome is None:
            raise S3Error("the Ray Train run ended without a result from rank 0")
        return TrainSummary(**outcome[1])
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _relay_progress(progress: Any, box: Any, every_s: float = 1.0) -> Any:
    """While the body runs, pass rank 0's progress reports on to ``progress`` (polled)."""
    if progress is None:
        yield
        return
    import ray

    stop = threading.Event()

    def poll() -> None:
        last = None
        while True:
            done = stop.wait(every_s)
            with contextlib.suppress(Exception):
                cur = ray.get(box.get_progress.remote(), timeout=30)
                if cur is not None and cur != last:
                    last = cur
                    progress(*cur)
            if done:
                return

    th = threading.Thread(target=poll, name="s3-train-progress", daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join(timeout=60)


def _pickle_error(e: BaseException) -> bytes:
    """The error as bytes the caller can raise again (its message when the type does not round-trip)."""
    try:
        data = pickle.dumps(e)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - any unpicklable error becomes an S3Error with its text
        return pickle.dumps(S3Error(f"{type(e).__name__}: {e}"))


def _unpickle_error(data: bytes) -> BaseException:
    err = pickle.loads(data)
    return err if isinstance(err, BaseException) else S3Error(str(err))


# --- in the workers ----------------------------------------------------------------------------------


def _bcast(obj: Any, group: Any) -> Any:
    """Rank 0's ``obj`` on every rank (over the control group)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _train_loop(config: dict[str, Any]) -> None:
    """Every Ray Train worker runs this; rank 0 drives the run, the others follow its updates."""
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if Path(config["cwd"]).is_dir():  # relative paths of the config mean what they meant to the caller
        os.chdir(config["cwd"])
    job, box = config["job"], config["mailbox"]
    if job.config.train.use_gpu:  # NCCL collectives (and all_gather_object) use the current device
        import torch
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
    ctrl = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    if rank == 0:
        _rank_zero(job, box, ctrl, world)
    else:
        _follower(job, ctrl, rank)


def _device(job: Any) -> str | None:
    if job.config.train.use_gpu:
        from ray.train.torch import get_device

        return str(get_device())
    return job.config.rl.device or None


def _ckdir(job: Any) -> Path:
    return Path(job.config.train.checkpoint_dir).expanduser().resolve()


def _model_ref(job: Any) -> str:
    cfg = job.config
    return job.model or cfg.learner.model or cfg.searcher.model


def _sync_replicas(core: Any) -> None:
    """All ranks at the same step, with rank 0's trainable weights (the default process group)."""
    import torch.distributed as dist

    from s3core.rl.distributed import broadcast_module_
    from s3core.rl.models import trainable_parameters

    steps: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(steps, int(core.step))
    if len(set(steps)) != 1:
        raise S3Error(f"the ranks resumed at different steps {steps}: they must read the same checkpoint dir")
    trainer = core.trainer
    tensors = list(trainable_parameters(trainer.policy).values())
    if trainer.critic is not None:
        tensors += list(trainable_parameters(trainer.critic).values())
    broadcast_module_(tensors, src=0)


def _rank_zero(job: Any, box: Any, ctrl: Any, world: int) -> None:
    from s3core.train.learner_core import LearnerCore
    from s3core.train.run import _LocalLearner, _resolve_model, drive, refuse_fresh_run_over_checkpoints

    job = dataclasses.replace(job, progress=lambda fraction, message: box.set_progress.remote(fraction, message))
    # whether the other ranks wait on ctrl now (not while all sync the weights or run a step together)
    listening = {"ctrl": True}

    def send_update(samples: list[Any], step: int, run_state: dict[str, Any], checkpoint: bool,
                    metric: float | None) -> None:
        _bcast(("update", samples, step, run_state, checkpoint, metric), ctrl)
        listening["ctrl"] = False

    class _RankZeroLearner(_LocalLearner):
        def update(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            out = super().update(*args, **kwargs)
            listening["ctrl"] = True
            return out

    try:
        cfg, ckdir = job.config, _ckdir(job)
        refuse_fresh_run_over_checkpoints(ckdir, job.resume)
        model_path = _resolve_model(_model_ref(job))  # first here: may build a local cache the others reuse
        logger.info("rank 0 of %d: loading the learner (%s, %s)", world, model_path, cfg.rl.algorithm)
        core = LearnerCore(cfg, model_path, ckdir, resume=job.resume, device=_device(job))
        _bcast(("start", core.last_checkpoint), ctrl)
        listening["ctrl"] = False
        _sync_replicas(core)
        listening["ctrl"] = True
        summary = drive(job, learner=_RankZeroLearner(core, on_update=send_update), devices=world)
    except BaseException as e:
        if listening["ctrl"]:  # let them go; otherwise Ray Train tears them down when this rank fails
            with contextlib.suppress(Exception):
                _bcast(("abort",), ctrl)
        with contextlib.suppress(Exception):
            import ray

            ray.get(box.put.remote("error", _pickle_error(e)), timeout=60)
        raise
    _bcast(("stop",), ctrl)
    import ray

    ray.get(box.put.remote("summary", dataclasses.asdict(summary)))


def _follower(job: Any, ctrl: Any, rank: int) -> None:
    from s3core.train.learner_core import LearnerCore
    from s3core.train.run import _resolve_model

    msg = _bcast(None, ctrl)
    if msg[0] != "start":
        return  # rank 0 failed before the run started; it reports the error
    checkpoint = msg[1]
    core = LearnerCore(job.config, _resolve_model(_model_ref(job)), _ckdir(job), resume=False, device=_device(job))
    if checkpoint:
        core.restore(checkpoint)
    _sync_replicas(core)
    logger.info("rank %d: ready at step %d", rank, core.step)
    while True:
        msg = _bcast(None, ctrl)
        if msg[0] != "update":
            return  # "stop" (done) or "abort" (rank 0 failed and reports it)
        _, samples, step, run_state, checkpoint_now, metric = msg
        core.update(samples, step, run_state, checkpoint=checkpoint_now, metric=metric)
