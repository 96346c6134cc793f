"""The kubernetes backend against a RECORDING API endpoint: no API server can run on these machines
(no kube-apiserver, k3s, kind or Docker), so a small loopback HTTP server answers the few API paths the
backend uses, keeps the objects it is sent, and records every request.  The official ``kubernetes``
client talks to it through an ordinary kubeconfig -- so what is checked is the real client's real
HTTP calls: paths, verbs, query parameters and bodies (every body is validated against the
Kubernetes 1.37 schemas with ``kubernetes-validate``).  What it does NOT show: scheduling, image
pulls, GPUs, RBAC, admission, KubeRay's operator -- nothing a live cluster decides.

Also checked: the controller (``--backend kubernetes``) creates one Job per attempt, reads a failed
Job's condition and its pod's termination reason into the job's reason, retries per
``run.max_attempts``, deletes the Job on cancel; and the container command a Job carries really runs
a job: the test runs it as the pod would, with the pod's environment, and the job succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from s3core.jobs.backends.kubernetes import KubernetesBackend, KubeSettings, job_manifest, object_name
from s3core.jobs.client import ControllerClient
from s3core.jobs.model import JobRecord
from s3core.jobs.spec import parse_spec
from s3core.runtime.local import LocalStack

TOKEN = "k8s-test-token"
NS = "s3"
OWNER_UID = "5f0c1d2e-aaaa-4bbb-8ccc-0123456789ab"


class FakeKubeAPI:
    """A loopback HTTP endpoint speaking the slice of the Kubernetes API the backend uses."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}  # object path -> object
        self.pods: dict[str, list[dict[str, Any]]] = {}  # job name -> pods
        self.crds: set[str] = set()
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with api.lock:
                    api.requests.append({"method": method, "path": url.path, "query": query, "body": body,
                                         "auth": self.headers.get("Authorization", "")})
                    code, obj = api.route(method, url.path, query, body)
                self._reply(code, obj)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
        return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                      "reason": reason, "code": code}

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if path.startswith("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/") and method == "GET":
            name = parts[-1]
            if name in self.crds:
                group = name.split(".", 1)[1]
                return 200, {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                             "metadata": {"name": name},
                             "spec": {"group": group, "scope": "Namespaced",
                                      "names": {"plural": "rayjobs", "kind": "RayJob"},
                                      "versions": [{"name": "v1", "served": True, "storage": True}]}}
            return self._status(404, "NotFound", f"customresourcedefinitions {name!r} not found")
        if path == f"/api/v1/namespaces/{NS}/pods" and method == "GET":
            job_name = query.get("labelSelector", "").removeprefix("job-name=")
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": self.pods.get(job_name, [])}
        # collections: /apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>[/status]]
        if len(parts) >= 6 and parts[0] == "apis" and parts[3] == "namespaces":
            collection = "/" + "/".join(parts[:6])
            if method == "POST" and len(parts) == 6:
                name = body["metadata"]["name"]
                key = f"{collection}/{name}"
                if key in self.objects:
                    return self._status(409, "AlreadyExists", f"{parts[5]} {name!r} already exists")
                obj = json.loads(json.dumps(body))
                obj["metadata"].update(uid=f"uid-{len(self.objects)}", creationTimestamp="2026-11-26T00:00:00Z")
                obj.setdefault("status", {})
                self.objects[key] = obj
                return 201, obj
            if len(parts) >= 7:
                key = f"{collection}/{parts[6]}"
                if key not in self.objects:
                    return self._status(404, "NotFound", f"{parts[5]} {parts[6]!r} not found")
                if method == "GET":
                    return 200, self.objects[key]
                if method == "DELETE":
                    del self.objects[key]
                    return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return self._status(404, "NotFound", f"the fake API does not serve {method} {path}")

    # -- test controls ------------------------------------------------------------------------------
    def job_path(self, name: str) -> str:
        return f"/apis/batch/v1/namespaces/{NS}/jobs/{name}"

    def set_status(self, path: str, status: dict[str, Any]) -> None:
        with self.lock:
            self.objects[path]["status"] = status

    def posted(self, plural: str = "jobs") -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"].endswith("/" + plural)]

    def calls(self, method: str, contains: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == method and contains in r["path"]]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def failed_status(reason: str, message: str) -> dict[str, Any]:
    return {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}]}


def terminated_pod(job_name: str, reason: str, code: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{job_name}-x7k2p", "namespace": NS,
                                                           "labels": {"job-name": job_name}},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "worker", "image": "s3-platform:test", "imageID": "sha256:0", "ready": False,
                "restartCount": 0, "state": {"terminated": {"exitCode": code, "reason": reason}}}]}}


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, "1.37.0", strict=True)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    a = FakeKubeAPI()
    yield a
    a.close()


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "cluster-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NS}}],
    }))
    return path


# --- the backend, in process ----------------------------------------------------------------------

def test_backend_calls(api: FakeKubeAPI, tmp_path: Path):
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kubeconfig(tmp_path / "kubeconfig", api.url)))
    settings = KubeSettings(namespace=NS, image="s3-platform:test", redis_url="redis://s3-redis:6379/0")
    backend = KubernetesBackend(settings, api_client=client)
    spec = parse_spec("kind: eval\njob: {questions: [/data/q.jsonl], methods: [naive-rag], index: /data/i, "
                      "out: /data/o}\nkubernetes: {gpus: 1, node_selector: {pool: gpu}}\n")
    job = JobRecord(id="eval-00c0ffee", kind="eval", attempts=1, max_attempts=2, labels={"team": "a"})

    info = backend.launch(job, spec)
    name = object_name(job.id, 1)
    assert info.ref == f"kubernetes:Job:{NS}/{name}" and info.desc == f"kubernetes Job {NS}/{name}"
    (sent,) = api.posted("jobs")
    assert sent == job_manifest(job, spec, settings)  # nothing lost on the way through the client's models
    validate(sent)
    assert api.requests[-1]["auth"] == "Bearer cluster-token"
    job.worker_ref = info.ref

    assert backend.check(job).alive is True
    api.set_status(api.job_path(name), failed_status("BackoffLimitExceeded", "Job has reached the specified "
                                                                           "backoff limit"))
    api.pods[name] = [terminated_pod(name, "OOMKilled", 137)]
    st = backend.check(job)
    assert st.alive is False
    assert st.reason == (f"Kubernetes Job {NS}/{name} failed: BackoffLimitExceeded (Job has reached the specified "
                         f"backoff limit); pod {name}-x7k2p: container worker terminated: OOMKilled (exit code 137)")
    assert api.calls("GET", "/pods")[-1]["query"]["labelSelector"] == f"job-name={name}"
    api.set_status(api.job_path(name), {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    assert "completed, but its worker reported no final state" in backend.check(job).reason

    assert backend.stop(job)
    (delete,) = api.calls("DELETE", name)
    assert delete["query"]["propagationPolicy"] == "Background" and "gracePeriodSeconds" not in delete["query"]
    assert backend.stop(job, force=True)  # already gone: a 404 is fine
    assert api.calls("DELETE", name)[-1]["query"]["gracePeriodSeconds"] == "0"
    assert "no longer exists" in backend.check(job).reason

    # multi-worker training: a Job while the RayJob CRD is missing, a RayJob once it is installed
    train = parse_spec("kind: train\ntrain: {questions: [/data/t.jsonl], backend: ray, num_workers: 2}\n"
                       "job: {index: /data/idx}\nkubernetes: {ray_workers: 2, gpus: 1}\n")
    tjob = JobRecord(id="train-0badcafe", kind="train", attempts=1)
    assert backend.launch(tjob, train).ref.startswith("kubernetes:Job:")
    api.crds.add("rayjobs.ray.io")
    backend._ray = None  # forget the cached answer
    tjob.attempts = 2
    rinfo = backend.launch(tjob, train)
    assert rinfo.ref == f"kubernetes:RayJob:{NS}/{object_name(tjob.id, 2)}"
    (ray,) = api.posted("rayjobs")
    assert ray["kind"] == "RayJob" and ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
    for tmpl in (ray["spec"]["rayClusterSpec"]["headGroupSpec"]["template"],
                 ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]):
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": tmpl})
    tjob.worker_ref = rinfo.ref
    rpath = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs/{object_name(tjob.id, 2)}"
    assert backend.check(tjob).alive is True
    api.set_status(rpath, {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "driver exited 1"})
    assert backend.check(tjob).reason.endswith("failed: FAILED (driver exited 1)")
    backend.stop(tjob)
    assert api.calls("DELETE", "/rayjobs/")[-1]["query"]["propagationPolicy"] == "Background"


# --- the controller on the kubernetes backend -------------------------------------------------------

@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    stack = LocalStack(tmp_path / "redis", detach=False)
    info = stack.start_redis()
    try:
        yield f"redis://127.0.0.1:{info.grpc_port}/0"
    finally:
        stack.down()


def _wait(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_controller_drives_kubernetes_jobs(api: FakeKubeAPI, tmp_path: Path, redis_url: str):
    from s3core.data.synth import synthesize

    synthesize(tmp_path / "world", seed=1, n_entities=40, n_questions=2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ready = tmp_path / "ready.json"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path / "kubeconfig", api.url)), "S3_LOG_LEVEL": "INFO"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.pop("S3_AUTH_TOKEN", None)
    cmd = [sys.executable, "-m", "s3_controller", "--backend", "kubernetes", "--redis-url", redis_url,
           "--port", "0", "--http-port", "0", "--ready-file", str(ready), "--auth-token-file", str(token_file),
           "--k8s-namespace", NS, "--k8s-image", "s3-platform:test", "--k8s-auth-secret", "s3-auth:token",
           "--k8s-owner", f"apps/v1/Deployment/s3-controller/{OWNER_UID}", "--reconcile-interval", "0.2",
           "--heartbeat-interval", "1", "--cancel-grace", "1", "--start-timeout", "60"]
    log = tmp_path / "controller.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: ready.is_file() or proc.poll() is not None, 60, "the controller")
        assert proc.poll() is None, log.read_text()
        port = json.loads(ready.read_text())["grpc_port"]
        with ControllerClient(f"127.0.0.1:{port}", token=TOKEN) as c:
            # 1. a training job: one Job per attempt; failures read back from the cluster, retried once
            train = c.submit("kind: train\ntrain: {questions: [/data/train.jsonl], steps: 2}\njob: {index: /data/i}\n"
                             "run: {max_attempts: 2, retry_delay_s: 0}\nkubernetes: {gpus: 1}\n",
                             labels={"team": "rl"})
            a1 = object_name(train.id, 1)
            _wait(lambda: api.posted("jobs"), 30, "the first Job")
            body = api.posted("jobs")[0]
            validate(body)
            assert body["metadata"]["name"] == a1 and body["metadata"]["labels"]["team"] == "rl"
            assert body["metadata"]["ownerReferences"][0]["uid"] == OWNER_UID
            env_vars = {e["name"]: e for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
            assert env_vars["S3_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "s3-auth", "key": "token"}
            assert env_vars["S3_JOBS_REDIS_URL"]["value"] == redis_url
            got = c.get(train.id)
            assert got.state == "running" and got.worker == f"kubernetes Job {NS}/{a1}"
            api.set_status(api.job_path(a1), failed_status("DeadlineExceeded", "Job was active longer than "
                                                                             "specified deadline"))
            a2 = object_name(train.id, 2)
            _wait(lambda: any(b["metadata"]["name"] == a2 for b in api.posted("jobs")), 30, "the second attempt's Job")
            api.set_status(api.job_path(a2), failed_status("BackoffLimitExceeded", "Job has reached the specified "
                                                                                 "backoff limit"))
            api.pods[a2] = [terminated_pod(a2, "Error", 1)]
            done = _wait(lambda: (lambda j: j if j.state == "failed" else None)(c.get(train.id)), 30, "failure")
            assert done.attempts == 2
            assert done.reason.startswith(f"attempt 2 of 2 failed: Kubernetes Job {NS}/{a2} failed: "
                                          "BackoffLimitExceeded")
            assert "container worker terminated: Error (exit code 1)" in done.reason
            reasons = [e.reason for e in c.watch(train.id, history_only=True) if e.type == "state"]
            assert any("DeadlineExceeded" in r and "retrying (attempt 2 of 2)" in r for r in reasons)

            # 2. the Job's container really runs the job: run it as the pod would, with the pod's env
            index = c.submit("kind: index\njob: {corpus: world/corpus.jsonl, out: idx-from-pod}\n")
            name = object_name(index.id, 1)
            _wait(lambda: any(b["metadata"]["name"] == name for b in api.posted("jobs")), 30, "the index Job")
            pod = [b for b in api.posted("jobs") if b["metadata"]["name"] == name][0]["spec"]["template"]["spec"]
            container = pod["containers"][0]
            pod_env = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"] != "HOME"}
            pod_env.update(POD_NAME=f"{name}-abcde", POD_NAMESPACE=NS)
            cmdline = [sys.executable if a == "python" else a for a in container["command"]] + container["args"]
            run = subprocess.run(cmdline, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env={**os.environ, **pod_env})
            assert run.returncode == 0, run.stderr[-3000:]
            finished = c.get(index.id)
            assert finished.state == "succeeded" and (tmp_path / "idx-from-pod" / "manifest.json").is_file()
            assert f"kubernetes Job {NS}/{name}" in finished.worker and f"pod {name}-abcde" in finished.worker

            # 3. cancel: the Job is deleted; a worker that never answers is given up on after the grace
            ev = c.submit("kind: eval\njob: {questions: [/data/q.jsonl], methods: [naive-rag], index: /data/i, "
                          "out: /data/o}\n")
            ename = object_name(ev.id, 1)
            _wait(lambda: any(b["metadata"]["name"] == ename for b in api.posted("jobs")), 30, "the eval Job")
            c.cancel(ev.id, reason="wrong index")
            cancelled = _wait(lambda: (lambda j: j if j.state == "cancelled" else None)(c.get(ev.id)), 30, "cancel")
            assert cancelled.reason.startswith("wrong index")
            deletes = api.calls("DELETE", ename)
            assert deletes and deletes[0]["query"]["propagationPolicy"] == "Background"
            assert api.job_path(ename) not in api.objects

            # 4. a spec the backend cannot run is refused before anything is created
            with pytest.raises(Exception, match="kubernetes.memory"):
                c.submit("kind: index\njob: {corpus: c, out: o}\nkubernetes: {memory: plenty}\n")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
