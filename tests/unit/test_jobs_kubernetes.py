"""The kubernetes backend's manifests, validated offline against the Kubernetes 1.37 schemas
(``kubernetes-validate``, strict: unknown fields fail).  A RayJob is a CRD the schemas do not cover:
its pod templates are validated as ``v1/PodTemplate`` objects and its own fields are checked here.

The client calls the backend makes are checked against a recording API endpoint in
tests/integration/test_controller_kubernetes.py; no API server can run on these machines.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from s3core.errors import ConfigError
from s3core.jobs.backends.kubernetes import KubeSettings, job_manifest, object_name, rayjob_manifest, wants_rayjob
from s3core.jobs.model import JobRecord
from s3core.jobs.spec import parse_spec

K8S_VERSION = "1.37.0"
OWNER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "s3-controller",
         "uid": "0b7f3c52-1111-4a8e-9d43-35f1a2c0e001"}


def validate(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _job(kind: str = "eval", attempt: int = 1, **kw) -> JobRecord:
    return JobRecord(id=f"{kind}-0a1b2c3d", kind=kind, attempts=attempt, max_attempts=3, request_id="req-1",
                     labels={"team": "search"}, **kw)


SPECS = {
    "cpu-defaults": "kind: eval\njob: {questions: [q.jsonl], methods: [naive-rag], index: idx, out: o}\n",
    "gpu-everything": """
kind: eval
presets: [gpu]
job: {questions: [/data/q.jsonl], methods: [naive-rag, s3], index: /data/idx, out: /data/out}
run: {timeout_s: 7200, max_attempts: 3}
kubernetes:
  image: registry.example.com/s3:1.2.3
  image_pull_policy: Always
  namespace: research
  cpu: "8"
  memory: 64Gi
  limit_cpu: true
  gpus: 2
  node_selector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3, topology.kubernetes.io/zone: eu-west-4a}
  tolerations:
    - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    - {key: spot, operator: Equal, value: "true", effect: NoExecute, tolerationSeconds: 300}
  service_account: s3-worker
  priority_class: batch-high
  pvc: s3-data
  mount_path: /data
  env: {HF_HUB_OFFLINE: "1", S3_LOG_LEVEL: DEBUG}
  backoff_limit: 1
  ttl_seconds_after_finished: 3600
""",
    "index": "kind: index\njob: {corpus: /data/c.jsonl, out: /data/idx, backend: dense}\nkubernetes: {gpus: 1}\n",
}
SETTINGS = {
    "plain-url": KubeSettings(namespace="s3", image="s3-platform:0.1.0", redis_url="redis://s3-redis:6379/0"),
    "secrets-and-owner": KubeSettings(namespace="research", image="s3-platform:0.1.0", redis_secret="s3-redis:url",
                                      auth_secret="s3-auth:token", owner=OWNER, service_account="s3-jobs",
                                      labels={"app.kubernetes.io/instance": "prod"}),
    "mtls": KubeSettings(namespace="s3", image="s3-platform:0.1.0", redis_url="redis://s3-redis:6379/0",
                         tls_secret="s3-tls", tls_client_auth=True),
}


@pytest.mark.parametrize("spec_name, settings_name, attempt",
                         list(itertools.product(SPECS, SETTINGS, [1, 3])))
def test_every_job_manifest_validates(spec_name: str, settings_name: str, attempt: int):
    spec = parse_spec(SPECS[spec_name])
    job = _job(spec.kind, attempt)
    m = job_manifest(job, spec, SETTINGS[settings_name])
    validate(m)
    assert m["metadata"]["name"] == f"s3-{job.id}-a{attempt}"
    labels = m["metadata"]["labels"]
    assert labels["s3.dev/job-id"] == job.id and labels["s3.dev/attempt"] == str(attempt)
    assert labels["team"] == "search"
    pod = m["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    assert c["command"][-1] == "s3core.jobs.worker"
    assert c["args"][:4] == ["--job-id", job.id, "--attempt", str(attempt)]
    env = {e["name"]: e for e in c["env"]}
    assert "S3_JOBS_REDIS_URL" in env
    yaml.safe_dump(m)  # plain data: what kubectl would take


def test_gpu_job_details():
    spec = parse_spec(SPECS["gpu-everything"])
    m = job_manifest(_job(), spec, SETTINGS["secrets-and-owner"])
    s = m["spec"]
    assert s["backoffLimit"] == 1 and s["ttlSecondsAfterFinished"] == 3600 and s["activeDeadlineSeconds"] == 7260
    pod = s["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2" and c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["limits"]["cpu"] == "8"
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert pod["tolerations"][1]["tolerationSeconds"] == 300
    assert pod["serviceAccountName"] == "s3-worker" and pod["priorityClassName"] == "batch-high"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "s3-data"}} in pod["volumes"]
    assert c["workingDir"] == "/data" and c["image"] == "registry.example.com/s3:1.2.3"
    env = {e["name"]: e for e in c["env"]}
    assert env["S3_JOBS_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "s3-redis", "key": "url"}
    assert env["S3_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "s3-auth", "key": "token"}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert m["metadata"]["ownerReferences"][0]["uid"] == OWNER["uid"]  # same namespace as the controller


def test_owner_reference_only_within_the_controllers_namespace():
    spec = parse_spec(SPECS["cpu-defaults"] + "kubernetes: {namespace: elsewhere}\n")
    m = job_manifest(_job(), spec, SETTINGS["secrets-and-owner"])
    assert "ownerReferences" not in m["metadata"] and m["metadata"]["namespace"] == "elsewhere"
    validate(m)


def test_rayjob_for_multi_worker_training():
    spec = parse_spec("""
kind: train
train: {questions: [/data/t.jsonl], backend: ray, num_workers: 4, use_gpu: true}
job: {index: /data/idx}
kubernetes: {ray_workers: 4, gpus: 1, memory: 32Gi, pvc: s3-data,
             tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]}
run: {timeout_s: 3600}
""")
    assert wants_rayjob(spec)
    job = _job("train")
    m = rayjob_manifest(job, spec, SETTINGS["secrets-and-owner"])
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayJob"
    s = m["spec"]
    assert s["entrypoint"].startswith("python -m s3core.jobs.worker --job-id train-0a1b2c3d --attempt 1")
    assert s["shutdownAfterJobFinishes"] is True and s["activeDeadlineSeconds"] == 3660
    head = s["rayClusterSpec"]["headGroupSpec"]
    workers = s["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    for tmpl in (head["template"], workers["template"]):
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t", "namespace": "research"},
                  "template": tmpl})
    # the object metadata is ordinary Kubernetes metadata
    validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m["metadata"]})
    with pytest.raises(ConfigError):
        rayjob_manifest(job, parse_spec("kind: train\ntrain: {questions: [t]}\njob: {index: i}\n"),
                        SETTINGS["plain-url"])


def test_missing_image_and_bad_secret_refs_are_errors():
    spec = parse_spec(SPECS["cpu-defaults"])
    with pytest.raises(ConfigError, match="kubernetes.image is required"):
        job_manifest(_job(), spec, KubeSettings(redis_url="redis://r:6379/0"))
    with pytest.raises(ConfigError, match="secret-name:key"):
        job_manifest(_job(), spec, KubeSettings(image="i", redis_secret="no-key"))


def test_object_names_are_dns_labels():
    assert object_name("eval-0a1b2c3d", 2) == "s3-eval-0a1b2c3d-a2"
    long = object_name("X" * 80, 12)
    assert len(long) <= 63 and long.endswith("-a12") and long == long.lower()


def test_deploy_examples_validate():
    root = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    docs = [(p.name, d) for p in sorted(root.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert {n for n, _ in docs} == {"eval-job.yaml", "train-job.yaml", "train-rayjob.yaml"}
    for _, doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            continue  # a KubeRay CRD, not a core kind: checked in tests/integration/test_train_ray.py
        validate(doc)
    jobs = [d for _, d in docs if d["kind"] == "Job"]
    for j in jobs:
        c = j["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["python", "-m", "s3core.jobs.worker"] and "--register" in c["args"]


def test_the_validator_rejects_what_an_api_server_would():
    m = job_manifest(_job(), parse_spec(SPECS["cpu-defaults"]), SETTINGS["plain-url"])
    m["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="gpus"):
        validate(m)


@pytest.mark.parametrize("client_auth", [False, True])
def test_tls_secret_reaches_the_worker(client_auth: bool):
    """Workers dial the services: with a TLS Secret they verify against its ca.crt (and present tls.crt for mTLS)."""
    settings = KubeSettings(namespace="s3", image="s3-platform:0.1.0", redis_url="redis://r:6379/0",
                            tls_secret="s3-tls", tls_client_auth=client_auth)
    m = job_manifest(_job(), parse_spec(SPECS["index"]), settings)
    validate(m)
    pod = m["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert vol["secret"]["secretName"] == "s3-tls"
    c = pod["containers"][0]
    (mount,) = [v for v in c["volumeMounts"] if v["name"] == "tls"]
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["S3_TLS_CA_FILE"] == f"{mount['mountPath']}/ca.crt"
    assert ("S3_TLS_CLIENT_CERT_FILE" in env) is client_auth and ("S3_TLS_CLIENT_KEY_FILE" in env) is client_auth
    assert "S3_TLS_CERT_FILE" not in env  # a worker serves nothing
    plain = job_manifest(_job(), parse_spec(SPECS["index"]), SETTINGS["plain-url"])
    assert not any(e["name"].startswith("S3_TLS") for e in plain["spec"]["template"]["spec"]["containers"][0]["env"])
