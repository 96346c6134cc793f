"""The ``kubernetes`` backend: a ``batch/v1`` Job per attempt, or a KubeRay ``RayJob`` for
multi-worker training when the ``rayjobs.ray.io`` CRD is installed.

The manifests come from pure functions (:func:`job_manifest`, :func:`rayjob_manifest`) that
return plain dicts -- tested offline against the Kubernetes schemas -- and :class:`KubernetesBackend`
is a thin layer over the official ``kubernetes`` client (imported lazily: the CPU install and the
local backend never need it).  Each attempt gets its own object (``s3-<job id>-a<attempt>``) with
``backoffLimit: 0`` by default: retries are the controller's, attempt by attempt, so every attempt
is fenced in the job store like a local one.  The pod runs ``python -m s3core.jobs.worker``, which
reads the spec from the job store and reports to it directly.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from s3core.errors import ConfigError, FailedPrecondition
from s3core.jobs.backends import ALIVE, UNKNOWN, WorkerInfo, WorkerStatus
from s3core.jobs.backends.local import REDIS_URL_ENV, WORKER_MODULE
from s3core.jobs.model import JobRecord
from s3core.jobs.spec import JobSpec

logger = logging.getLogger(__name__)

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayjobs"
RAYJOB_CRD = f"{RAY_PLURAL}.{RAY_GROUP}"
LABEL_JOB_ID = "s3.dev/job-id"
LABEL_ATTEMPT = "s3.dev/attempt"
LABEL_KIND = "s3.dev/kind"
TLS_MOUNT = "/var/run/secrets/s3-tls"
TIMEOUT_S = 30  # every API call: the reconcile loop never hangs on a slow API server


@dataclass
class KubeSettings:
    """Cluster-wide settings of the controller (per-job ones are the spec's ``kubernetes:``)."""

    namespace: str = "default"
    image: str = ""  # worker image (a spec's kubernetes.image wins)
    redis_url: str = ""  # job store URL as pods see it (used when redis_secret is empty)
    redis_secret: str = ""  # "secret:key" holding the job store URL (preferred: keeps passwords out of specs)
    auth_secret: str = ""  # "secret:key" holding the bearer token, exposed to workers as S3_AUTH_TOKEN
    tls_secret: str = ""  # kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt): workers dial the services over TLS
    tls_client_auth: bool = False  # mTLS: workers present tls.crt to the services
    store_namespace: str = "s3"  # key namespace of the job store in Redis
    owner: dict[str, str] | None = None  # {apiVersion, kind, name, uid} of the controller's own object
    service_account: str = ""
    heartbeat_interval: float = 5.0
    python: str = "python"
    labels: dict[str, str] = field(default_factory=dict)  # put on every object (e.g. the release name)


def object_name(job_id: str, attempt: int) -> str:
    """A DNS-1123 label: ``s3-<job id>-a<attempt>``, at most 63 characters."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"s3-{job_id}".lower()).strip("-")
    suffix = f"-a{attempt}"
    return base[:63 - len(suffix)].rstrip("-") + suffix


def _labels(job: JobRecord, settings: KubeSettings) -> dict[str, str]:
    return {
        **settings.labels,
        **job.labels,
        "app.kubernetes.io/name": "s3-job",
        "app.kubernetes.io/component": job.kind,
        "app.kubernetes.io/part-of": "s3",
        "app.kubernetes.io/managed-by": "s3-controller",
        LABEL_JOB_ID: job.id,
        LABEL_ATTEMPT: str(job.attempts),
        LABEL_KIND: job.kind,
    }


def _secret_ref(ref: str, what: str) -> dict[str, Any]:
    name, sep, key = ref.partition(":")
    if not sep or not name or not key:
        raise ConfigError(f"{what} must be 'secret-name:key', got {ref!r}")
    return {"secretKeyRef": {"name": name, "key": key}}


def _env(job: JobRecord, spec: JobSpec, settings: KubeSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if settings.redis_secret:
        env.append({"name": REDIS_URL_ENV, "valueFrom": _secret_ref(settings.redis_secret, "redis secret")})
    elif settings.redis_url:
        env.append({"name": REDIS_URL_ENV, "value": settings.redis_url})
    else:
        raise FailedPrecondition("the kubernetes backend needs the job store's URL for pods "
                                 "(--k8s-redis-url or --k8s-redis-secret)")
    if settings.auth_secret:
        env.append({"name": "S3_AUTH_TOKEN", "valueFrom": _secret_ref(settings.auth_secret, "auth secret")})
    if settings.tls_secret:
        env.append({"name": "S3_TLS_CA_FILE", "value": f"{TLS_MOUNT}/ca.crt"})
        if settings.tls_client_auth:
            env += [{"name": "S3_TLS_CLIENT_CERT_FILE", "value": f"{TLS_MOUNT}/tls.crt"},
                    {"name": "S3_TLS_CLIENT_KEY_FILE", "value": f"{TLS_MOUNT}/tls.key"}]
    env += [
        {"name": "S3_JOB_ID", "value": job.id},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "HOME", "value": "/tmp"},  # caches (embedded model conversion) on the writable volume
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TQDM_MININTERVAL", "value": "10"},
    ]
    known = {e["name"] for e in env}
    env += [{"name": k, "value": v} for k, v in sorted(spec.kubernetes.env.items()) if k not in known]
    return env


def _resources(spec: JobSpec, gpus: int | None = None) -> dict[str, Any]:
    k = spec.kubernetes
    n_gpu = k.gpus if gpus is None else gpus
    requests: dict[str, str] = {"cpu": k.cpu, "memory": k.memory}
    limits: dict[str, str] = {"memory": k.memory}
    if k.limit_cpu:
        limits["cpu"] = k.cpu
    if n_gpu:
        requests[k.gpu_resource] = str(n_gpu)
        limits[k.gpu_resource] = str(n_gpu)
    return {"requests": requests, "limits": limits}


def worker_args(job: JobRecord, settings: KubeSettings) -> list[str]:
    return ["--job-id", job.id, "--attempt", str(job.attempts), "--namespace", settings.store_namespace,
            "--state-dir", "/tmp/s3", "--heartbeat-interval", f"{settings.heartbeat_interval:g}"]


def _container(name: str, job: JobRecord, spec: JobSpec, settings: KubeSettings, *, command: list[str] | None,
               args: list[str] | None, gpus: int | None = None) -> dict[str, Any]:
    k = spec.kubernetes
    image = k.image or settings.image
    if not image:
        raise ConfigError("kubernetes.image is required (or start the controller with --k8s-image)")
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": k.image_pull_policy,
        "env": _env(job, spec, settings),
        "resources": _resources(spec, gpus),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if command:
        c["command"] = command
    if args:
        c["args"] = args
    if settings.tls_secret:
        c["volumeMounts"].append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
    if k.pvc:
        c["volumeMounts"].append({"name": "data", "mountPath": k.mount_path})
        c["workingDir"] = k.mount_path  # relative paths of the spec resolve on the data volume
    return c


def _pod_spec(containers: list[dict[str, Any]], spec: JobSpec, settings: KubeSettings,
              restart_policy: str | None = "Never") -> dict[str, Any]:
    k = spec.kubernetes
    pod: dict[str, Any] = {
        "containers": containers,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    if k.pvc:
        pod["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": k.pvc}})
    if settings.tls_secret:
        pod["volumes"].append({"name": "tls", "secret": {"secretName": settings.tls_secret, "defaultMode": 0o440}})
    if k.node_selector:
        pod["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        pod["tolerations"] = [dict(t) for t in k.tolerations]
    sa = k.service_account or settings.service_account
    if sa:
        pod["serviceAccountName"] = sa
    if k.priority_class:
        pod["priorityClassName"] = k.priority_class
    return pod


def _metadata(job: JobRecord, spec: JobSpec, settings: KubeSettings) -> dict[str, Any]:
    ns = spec.kubernetes.namespace or settings.namespace
    meta: dict[str, Any] = {
        "name": object_name(job.id, job.attempts),
        "namespace": ns,
        "labels": _labels(job, settings),
        "annotations": {"s3.dev/max-attempts": str(job.max_attempts), "s3.dev/request-id": job.request_id},
    }
    owner = settings.owner
    # owner references must point into the same namespace: only set when the job stays in the controller's
    if owner and owner.get("uid") and ns == settings.namespace:
        meta["ownerReferences"] = [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"], "uid": owner["uid"],
            "controller": False, "blockOwnerDeletion": False,
        }]
    return meta


def job_manifest(job: JobRecord, spec: JobSpec, settings: KubeSettings) -> dict[str, Any]:
    """The ``batch/v1`` Job of the job's current attempt."""
    k = spec.kubernetes
    meta = _metadata(job, spec, settings)
    container = _container("worker", job, spec, settings, command=[settings.python, "-m", WORKER_MODULE],
                           args=worker_args(job, settings))
    job_spec: dict[str, Any] = {
        "backoffLimit": k.backoff_limit,
        "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
        "template": {
            "metadata": {"labels": dict(meta["labels"])},
            "spec": _pod_spec([container], spec, settings),
        },
    }
    if spec.run.timeout_s:
        # a backstop a minute past the controller's own (precise) timeout
        job_spec["activeDeadlineSeconds"] = int(spec.run.timeout_s) + 60
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def rayjob_manifest(job: JobRecord, spec: JobSpec, settings: KubeSettings) -> dict[str, Any]:
    """A KubeRay ``ray.io/v1`` RayJob: a head (which runs the worker entrypoint, the training
    driver) and ``kubernetes.ray_workers`` worker pods with ``kubernetes.gpus`` GPUs each."""
    k = spec.kubernetes
    if k.ray_workers < 1:
        raise ConfigError("kubernetes.ray_workers must be >= 1 for a RayJob")
    meta = _metadata(job, spec, settings)
    labels = dict(meta["labels"])
    head = _container("ray-head", job, spec, settings, command=None, args=None, gpus=0)
    head["ports"] = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}]
    worker = _container("ray-worker", job, spec, settings, command=None, args=None)
    entrypoint = " ".join([settings.python, "-m", WORKER_MODULE, *worker_args(job, settings)])
    rj_spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": {
            "rayVersion": k.ray_version,
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0"},
                "template": {"metadata": {"labels": labels}, "spec": _pod_spec([head], spec, settings, None)},
            },
            "workerGroupSpecs": [{
                "groupName": "workers",
                "replicas": k.ray_workers,
                "minReplicas": k.ray_workers,
                "maxReplicas": k.ray_workers,
                "rayStartParams": {},
                "template": {"metadata": {"labels": labels}, "spec": _pod_spec([worker], spec, settings, None)},
            }],
        },
    }
    if spec.run.timeout_s:
        rj_spec["activeDeadlineSeconds"] = int(spec.run.timeout_s) + 60
    return {"apiVersion": f"{RAY_GROUP}/{RAY_VERSION}", "kind": "RayJob", "metadata": meta, "spec": rj_spec}


def wants_rayjob(spec: JobSpec) -> bool:
    return spec.kind == "train" and spec.kubernetes.ray_workers > 0


# --- the client side -----------------------------------------------------------------------------

def _api_status(exc: BaseException) -> int:
    return int(getattr(exc, "status", 0) or 0)


def _get(obj: Any, *path: str) -> Any:
    """``obj.a.b`` for client model objects and ``obj["a"]["b"]`` for dicts; None when missing."""
    for p in path:
        if obj is None:
            return None
        obj = obj.get(p) if isinstance(obj, dict) else getattr(obj, p, None)
    return obj


class KubernetesBackend:
    name = "kubernetes"

    def __init__(self, settings: KubeSettings, api_client: Any = None) -> None:
        self.settings = settings
        self._api_client = api_client
        self._apis: dict[str, Any] = {}
        self._ray: tuple[bool, float] | None = None

    # -- clients ---------------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._api_client is None:
            from kubernetes import client, config

            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config()
            else:
                config.load_kube_config()
            self._api_client = client.ApiClient()
        return self._api_client

    def _api(self, name: str) -> Any:
        if name not in self._apis:
            from kubernetes import client

            self._apis[name] = getattr(client, name)(self._client())
        return self._apis[name]

    def rayjob_available(self) -> bool:
        """Is the KubeRay RayJob CRD installed?  (Cached for five minutes.)"""
        now = time.monotonic()
        if self._ray is not None and now - self._ray[1] < 300:
            return self._ray[0]
        from kubernetes.client.exceptions import ApiException

        try:
            # only its existence matters: the raw response (read and released), not the client's model of it
            resp = self._api("ApiextensionsV1Api").read_custom_resource_definition(
                RAYJOB_CRD, _request_timeout=TIMEOUT_S, _preload_content=False)
            resp.read()
            resp.release_conn()
            ok = True
        except ApiException as exc:
            if _api_status(exc) not in (403, 404):
                raise
            if _api_status(exc) == 403:
                logger.warning("cannot read CRD %s (403): treating KubeRay as not installed", RAYJOB_CRD)
            ok = False
        self._ray = (ok, now)
        return ok

    # -- Backend ---------------------------------------------------------------------------------------
    def validate(self, spec: JobSpec, workdir: str) -> None:
        if not (spec.kubernetes.image or self.settings.image):
            raise ConfigError("kubernetes.image is required (the controller has no --k8s-image default)")

    def launch(self, job: JobRecord, spec: JobSpec) -> WorkerInfo:
        ns = spec.kubernetes.namespace or self.settings.namespace
        name = object_name(job.id, job.attempts)
        if wants_rayjob(spec):
            if self.rayjob_available():
                body = rayjob_manifest(job, spec, self.settings)
                self._api("CustomObjectsApi").create_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, body, _request_timeout=TIMEOUT_S)
                return WorkerInfo(desc=f"kubernetes RayJob {ns}/{name} ({spec.kubernetes.ray_workers} workers)",
                                  ref=f"kubernetes:RayJob:{ns}/{name}")
            logger.warning("job %s asks for %d Ray workers but the %s CRD is not installed: running it as a "
                           "single-pod Job", job.id, spec.kubernetes.ray_workers, RAYJOB_CRD)
        from kubernetes import client

        body = job_manifest(job, spec, self.settings)
        self._api("BatchV1Api").create_namespaced_job(ns, client.V1Job.from_dict(body), _request_timeout=TIMEOUT_S)
        return WorkerInfo(desc=f"kubernetes Job {ns}/{name}", ref=f"kubernetes:Job:{ns}/{name}")

    @staticmethod
    def _ref(job: JobRecord) -> tuple[str, str, str] | None:
        parts = job.worker_ref.split(":", 2)
        if len(parts) != 3 or parts[0] != "kubernetes" or "/" not in parts[2]:
            return None
        ns, _, name = parts[2].partition("/")
        return parts[1], ns, name

    def check(self, job: JobRecord) -> WorkerStatus:
        ref = self._ref(job)
        if ref is None:
            return UNKNOWN
        kind, ns, name = ref
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "RayJob":
                obj = self._api("CustomObjectsApi").get_namespaced_custom_object_status(
                    RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, name, _request_timeout=TIMEOUT_S)
                return self._rayjob_status(ns, name, obj)
            obj = self._api("BatchV1Api").read_namespaced_job_status(name, ns, _request_timeout=TIMEOUT_S)
            return self._job_status(ns, name, obj)
        except ApiException as exc:
            if _api_status(exc) == 404:
                return WorkerStatus(False, f"Kubernetes {kind} {ns}/{name} no longer exists (deleted?)")
            logger.warning("reading Kubernetes %s %s/%s failed: %s", kind, ns, name, exc)
            return UNKNOWN

    def _job_status(self, ns: str, name: str, obj: Any) -> WorkerStatus:
        for cond in _get(obj, "status", "conditions") or []:
            ctype, status = _get(cond, "type"), _get(cond, "status")
            if status != "True":
                continue
            if ctype == "Failed":
                why = f"Kubernetes Job {ns}/{name} failed: {_get(cond, 'reason') or 'unknown reason'}"
                msg = _get(cond, "message")
                if msg:
                    why += f" ({msg})"
                pods = self._pod_reasons(ns, name)
                return WorkerStatus(False, why + (f"; {pods}" if pods else ""))
            if ctype == "Complete":
                return WorkerStatus(False, f"Kubernetes Job {ns}/{name} completed, but its worker reported no "
                                           "final state")
        return ALIVE

    def _pod_reasons(self, ns: str, job_name: str) -> str:
        try:
            pods = self._api("CoreV1Api").list_namespaced_pod(ns, label_selector=f"job-name={job_name}",
                                                              _request_timeout=TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - extra detail only
            logger.debug("listing pods of %s/%s failed: %s", ns, job_name, exc)
            return ""
        out = []
        for pod in _get(pods, "items") or []:
            for cs in _get(pod, "status", "container_statuses") or _get(pod, "status", "containerStatuses") or []:
                term = _get(cs, "state", "terminated")
                if term is not None:
                    code = _get(term, "exit_code")
                    code = _get(term, "exitCode") if code is None else code
                    out.append(f"pod {_get(pod, 'metadata', 'name')}: container {_get(cs, 'name')} terminated: "
                               f"{_get(term, 'reason') or 'Error'} (exit code {code})")
        return "; ".join(out[:3])

    @staticmethod
    def _rayjob_status(ns: str, name: str, obj: Any) -> WorkerStatus:
        status = _get(obj, "status") or {}
        deploy = _get(status, "jobDeploymentStatus") or ""
        job_status = _get(status, "jobStatus") or ""
        msg = _get(status, "message") or ""
        if deploy == "Failed" or job_status in ("FAILED", "STOPPED"):
            return WorkerStatus(False, f"Kubernetes RayJob {ns}/{name} failed: {job_status or deploy}"
                                       + (f" ({msg})" if msg else ""))
        if deploy == "Complete" or job_status == "SUCCEEDED":
            return WorkerStatus(False, f"Kubernetes RayJob {ns}/{name} finished, but its worker reported no "
                                       "final state")
        return ALIVE

    def stop(self, job: JobRecord, force: bool = False) -> bool:
        ref = self._ref(job)
        if ref is None:
            return False
        kind, ns, name = ref
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "RayJob":
                self._api("CustomObjectsApi").delete_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, ns, RAY_PLURAL, name, propagation_policy="Background",
                    _request_timeout=TIMEOUT_S, **({"grace_period_seconds": 0} if force else {}))
            else:
                self._api("BatchV1Api").delete_namespaced_job(
                    name, ns, propagation_policy="Background", _request_timeout=TIMEOUT_S,
                    **({"grace_period_seconds": 0} if force else {}))
        except ApiException as exc:
            if _api_status(exc) != 404:
                raise
        return True

    def cleanup(self, job: JobRecord) -> None:
        """Failed Jobs are kept for ``ttlSecondsAfterFinished`` (their pods' logs stay readable)."""
