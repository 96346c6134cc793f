"""``train.backend: ray``: two Ray Train workers run the update data parallel, rank 0 drives the loop.

Ray binds beyond loopback, so everything that talks to Ray runs in a subprocess inside a network
namespace of its own (``unshare --net --map-root-user`` with ``lo`` up; only loopback exists there):
``_ray_train_run.py`` starts redis, a retriever, a generator and searchers (tiny model, synthetic
world) on loopback and trains the same 2-step GRPO job with the ray backend (2 workers) and with the
local one (the ray run as step 1, then a resumed job for step 2), then a ray job whose rank 0 fails.
The test checks the ray run like a local one (steps, resume, versions published to the searcher,
checkpoints that verify, metrics), that it trained the same parameters as the local run, and that
rank 0's error reaches the caller as itself.
Where unprivileged network namespaces are not permitted the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).with_name("_ray_train_run.py")
NETNS = ["unshare", "--net", "--map-root-user"]

pytestmark = pytest.mark.timeout(420)


def _netns_problem() -> str | None:
    """Why a private network namespace cannot be made here (None when it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) to run Ray inside a private network namespace"
    try:
        r = subprocess.run([*NETNS, "sh", "-c", "ip link set lo up && ip -o link show"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare --net failed: {e}"
    if r.returncode != 0:
        return f"unprivileged network namespaces are not permitted here ({r.stderr.strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from s3core.data.synth import synthesize
    from s3core.retrieval.index import build_index
    from s3core.rl.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("ray-world")
    synthesize(root / "data", seed=3, n_questions=12)
    build_index(root / "data" / "corpus.jsonl", "bm25", root / "idx", show_progress=False)
    build_tiny_model(root / "tiny", seed=1)
    return root


@pytest.fixture(scope="module")
def runs(world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    problem = _netns_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path_factory.mktemp("ray-runs")
    ray_tmp = tempfile.mkdtemp(prefix="s3ray-", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp, "GLOO_SOCKET_IFNAME": "lo",
           "S3_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    log = out / "run.log"
    cmd = [*NETNS, "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, str(SCRIPT), str(world),
           str(out)]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=360)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the Ray run did not finish in 360 s:\n{log.read_text(errors='replace')[-6000:]}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the run left in its session (Ray's daemons)
            except ProcessLookupError:
                pass
            shutil.rmtree(ray_tmp, ignore_errors=True)
    if rc != 0 or not (out / "result.json").is_file():
        pytest.fail(f"the Ray run failed (exit {rc}):\n{log.read_text(errors='replace')[-8000:]}")
    return {"out": out, "result": json.loads((out / "result.json").read_text()), "log": log}


def test_ray_backend_runs_the_loop(runs: dict[str, Any]) -> None:
    from s3core.rl.checkpoint import CheckpointManager, verify_checkpoint

    out, first, res = runs["out"], runs["result"]["ray-1"], runs["result"]["ray"]
    summary = res["summary"]
    ckdir = out / "ckpt-ray"
    assert (first["summary"]["steps"], first["summary"]["start_step"], first["searcher"]["version"]) == (1, 0, 1)
    # the second job resumed at step 1 (every rank from step-000001) and did step 2
    assert (summary["steps"], summary["version"], summary["start_step"]) == (2, 2, 1)
    assert Path(summary["checkpoint_dir"]) == ckdir.resolve()
    # the searcher serves the last version, from the folder rank 0 published
    assert res["searcher"]["version"] == 2
    assert Path(res["searcher"]["checkpoint_path"]).resolve() == Path(summary["policy_path"]).resolve()
    for name in ("step-000001", "step-000002"):
        verify_checkpoint(ckdir / name)
    latest = CheckpointManager(ckdir).latest()
    assert latest is not None and latest.name == "step-000002"
    assert json.loads((latest / "extra.json").read_text())["extra"]["data"]["pos"] == 4
    rows = [json.loads(x) for x in (ckdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["trajectories"] == 4 for r in rows)  # 2 questions x group of 2
    assert [h["step"] for h in first["summary"]["history"] + summary["history"]] == [1, 2]
    # TrainJob.progress reached the caller from rank 0
    assert res["progress"] and res["progress"][-1][0] == 1.0 and "step 2/2" in res["progress"][-1][1]


def test_ray_backend_trains_what_the_local_backend_trains(runs: dict[str, Any]) -> None:
    out, result = runs["out"], runs["result"]
    local = result["local"]["summary"]["history"]
    ray = result["ray-1"]["summary"]["history"] + result["ray"]["summary"]["history"]
    assert [h["step"] for h in local] == [h["step"] for h in ray] == [1, 2]
    # the same rollouts and rewards (same seed, same policy up to float noise) ...
    for a, b in zip(local, ray):
        for key in ("reward_mean", "gbr_mean", "context_acc_mean", "tokens", "response_tokens"):
            assert a[key] == b[key], key
        for key in ("entropy", "kl", "grad_norm", "policy_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    # ... and the same trained weights: 2 workers x their share of each mini-batch == 1 process
    states = {b: torch.load(out / f"ckpt-{b}" / "step-000002" / "trainer.pt", map_location="cpu", weights_only=True)
              for b in ("local", "ray")}
    initial = torch.load(out / "ckpt-local" / "step-000001" / "trainer.pt", map_location="cpu", weights_only=True)
    assert states["ray"]["step"] == states["local"]["step"] == 2
    lp, rp = states["local"]["policy"], states["ray"]["policy"]
    assert lp.keys() == rp.keys()
    for name in lp:
        torch.testing.assert_close(rp[name], lp[name], rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert any(not torch.equal(initial["policy"][n], lp[n]) for n in lp)  # step 2 moved the weights
    assert torch.equal(states["ray"]["generator"], states["local"]["generator"])
    print(f"ray backend: {result['ray']['seconds']:.1f}s, local: {result['local']['seconds']:.1f}s")


def test_rank_zero_error_reaches_the_caller(runs: dict[str, Any]) -> None:
    err = runs["result"]["error"]
    assert err is not None, "the run should have failed"
    assert err["type"] == "FailedPrecondition" and "serves policy version 2" in err["message"], err
    assert not list((runs["out"] / "ckpt-ray-error").glob("step-*"))


# --- configuration errors come before any Ray work (no namespace needed: Ray is not started) ---------


def _ray_config(tmp_path: Path, **train: Any) -> Any:
    from s3core.config import load_config

    return load_config(overrides={"train": {"questions": [], "checkpoint_dir": str(tmp_path / "ckpt"),
                                            "backend": "ray", "num_workers": 2, **train}})


def test_ray_backend_with_a_learner_service_is_refused(tmp_path: Path) -> None:
    from s3core.errors import InvalidArgument
    from s3core.train.run import TrainJob, run_training

    with pytest.raises(InvalidArgument, match="train.learner"):
        run_training(TrainJob(config=_ray_config(tmp_path, learner="127.0.0.1:1"), show_progress=False))


def test_ray_backend_refuses_a_fresh_run_over_checkpoints_before_starting_ray(tmp_path: Path) -> None:
    import ray

    from s3core.errors import FailedPrecondition
    from s3core.train.run import TrainJob, run_training

    (tmp_path / "ckpt" / "step-000001").mkdir(parents=True)
    with pytest.raises(FailedPrecondition, match="already holds checkpoints"):
        run_training(TrainJob(config=_ray_config(tmp_path), show_progress=False, resume=False))
    assert not ray.is_initialized()


def test_the_local_path_does_not_import_ray() -> None:
    code = "import sys, s3core.train.run, s3core.rl.trainer, s3core.rl.distributed; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_rayjob_example_is_consistent(tmp_path: Path) -> None:
    """deploy/examples/train-rayjob.yaml: a RayJob whose Ray matches the pinned one, pod templates that
    validate against the Kubernetes schemas, and a config that selects the ray backend."""
    import kubernetes_validate
    import ray
    import yaml

    from s3core.config import load_config

    path = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "train-rayjob.yaml"
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    assert set(docs) == {"ConfigMap", "RayJob"}
    cm, rj = docs["ConfigMap"], docs["RayJob"]
    kubernetes_validate.validate(cm, "1.37.0", strict=True)
    assert rj["apiVersion"] == "ray.io/v1" and rj["spec"]["entrypoint"].startswith("s3 train --config /etc/s3/")
    cluster = rj["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    templates = [cluster["headGroupSpec"]["template"], *(w["template"] for w in cluster["workerGroupSpecs"])]
    for tmpl in templates:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": tmpl}, "1.37.0", strict=True)
    (tmp_path / "train.yaml").write_text(cm["data"]["train.yaml"])
    cfg = load_config(tmp_path / "train.yaml")
    workers = cluster["workerGroupSpecs"][0]
    gpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert cfg.train.backend == "ray" and cfg.train.use_gpu and cfg.train.num_workers == workers["replicas"] * gpus
