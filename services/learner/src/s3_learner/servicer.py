"""gRPC ``s3.v1.Learner`` over :class:`s3core.train.learner_core.LearnerCore`.

Updates run one at a time in a worker thread (the event loop keeps answering ``Status`` and health
checks during a long step).  Requests are checked before any work: every trajectory must carry
token ids, a 0/1 action mask of the same length with at least one action token, and a finite
reward; the step must be the learner's next one (a retry of the step just applied returns its
result instead of training twice).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import grpc

from s3.v1 import learner_pb2, learner_pb2_grpc
from s3_learner import metrics as learner_metrics
from s3core.errors import InvalidArgument
from s3core.rpc.convert_learner import scored_from_pb
from s3core.train import metrics
from s3core.train.samples import to_sample

SERVICE_NAME = "s3.v1.Learner"


def validate_update(request: learner_pb2.UpdateRequest, max_trajectories: int, max_tokens: int
                    ) -> tuple[list[Any], dict[str, Any]]:
    n = len(request.trajectories)
    if n == 0:
        raise InvalidArgument("trajectories is empty")
    if n > max_trajectories:
        raise InvalidArgument(f"{n} trajectories in one update; the limit is {max_trajectories} (learner.max_trajectories)")
    if request.step < 1:
        raise InvalidArgument(f"step must be >= 1, got {request.step}")
    samples = []
    for i, p in enumerate(request.trajectories):
        t = p.trajectory
        if not t.token_ids:
            raise InvalidArgument(f"trajectories[{i}]: token_ids is empty")
        if len(t.token_ids) > max_tokens:
            raise InvalidArgument(f"trajectories[{i}]: {len(t.token_ids)} tokens; the limit is {max_tokens} "
                                  "(learner.max_tokens)")
        if len(t.action_mask) != len(t.token_ids):
            raise InvalidArgument(f"trajectories[{i}]: {len(t.token_ids)} token_ids but {len(t.action_mask)} "
                                  "action_mask values")
        if any(m not in (0, 1) for m in t.action_mask):
            raise InvalidArgument(f"trajectories[{i}]: action_mask values must be 0 or 1")
        if not any(t.action_mask):
            raise InvalidArgument(f"trajectories[{i}]: no action token (every action_mask value is 0)")
        if any(x < 0 for x in t.token_ids):
            raise InvalidArgument(f"trajectories[{i}]: negative token id")
        if not math.isfinite(p.reward):
            raise InvalidArgument(f"trajectories[{i}]: reward is not finite ({p.reward})")
        samples.append(to_sample(scored_from_pb(p), i))
    try:
        run_state = json.loads(request.run_state_json or "{}")
    except ValueError as exc:
        raise InvalidArgument(f"run_state_json is not JSON: {exc}") from None
    if not isinstance(run_state, dict):
        raise InvalidArgument("run_state_json must be a JSON object")
    return samples, run_state


class LearnerServicer(learner_pb2_grpc.LearnerServicer):
    def __init__(self, holder: Any, max_trajectories: int, max_tokens: int) -> None:
        self.holder = holder  # .core: the LearnerCore once loaded
        self.max_trajectories = max_trajectories
        self.max_tokens = max_tokens
        self._update_lock = asyncio.Lock()

    async def Update(self, request: learner_pb2.UpdateRequest, context: grpc.aio.ServicerContext
                     ) -> learner_pb2.UpdateResponse:
        samples, run_state = validate_update(request, self.max_trajectories, self.max_tokens)
        vocab = self.holder.vocab_size
        for i, s in enumerate(samples):
            if vocab and max(s.token_ids) >= vocab:
                raise InvalidArgument(f"trajectories[{i}]: token id {max(s.token_ids)} is outside the policy's "
                                      f"vocabulary ({vocab}); was it rolled out with another tokenizer?")
        metric = request.metric if request.HasField("metric") and math.isfinite(request.metric) else None
        async with self._update_lock:
            t0 = time.perf_counter()
            res = await asyncio.to_thread(self.holder.core.update, samples, int(request.step), run_state,
                                          checkpoint=bool(request.checkpoint), metric=metric)
            learner_metrics.UPDATE_SECONDS.observe(time.perf_counter() - t0)
        stats = {**dict(request.driver_stats), **res.stats}
        rewards = [s.reward for s in samples]
        gbrs = [p.gbr for p in request.trajectories]
        stats.setdefault("reward_mean", sum(rewards) / len(rewards))
        stats["gbr_mean"] = sum(gbrs) / len(gbrs)
        metrics.publish(res.step, res.version, stats, trajectories=len(samples))
        return learner_pb2.UpdateResponse(step=res.step, policy_version=res.version, stats=res.stats,
                                          checkpoint_path=res.checkpoint_path, policy_path=res.policy_path)

    async def SaveCheckpoint(self, request: learner_pb2.SaveCheckpointRequest, context: grpc.aio.ServicerContext
                             ) -> learner_pb2.SaveCheckpointResponse:
        async with self._update_lock:
            path = await asyncio.to_thread(self.holder.core.save)
        return learner_pb2.SaveCheckpointResponse(path=path, step=self.holder.core.step)

    async def Status(self, request: learner_pb2.LearnerStatusRequest, context: grpc.aio.ServicerContext
                     ) -> learner_pb2.LearnerStatusResponse:
        s = self.holder.core.status()
        return learner_pb2.LearnerStatusResponse(**s)
