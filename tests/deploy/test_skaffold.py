"""skaffold.yaml, read as YAML (no skaffold binary on these machines): it builds the images from docker/, deploys
the chart with the helm deployer and the profile's values file, sets the image values from what it built,
and forwards the controller's and Grafana's ports."""

from __future__ import annotations

import re
from typing import Any

import yaml
from deploykit import CHART, RELEASE, REPO

SKAFFOLD = REPO / "skaffold.yaml"


def _config() -> dict[str, Any]:
    return yaml.safe_load(SKAFFOLD.read_text())


def _check_build(build: dict[str, Any]) -> dict[str, str]:
    images = {}
    for a in build["artifacts"]:
        dockerfile = a["docker"]["dockerfile"]
        assert (REPO / a.get("context", ".") / dockerfile).is_file(), dockerfile
        images[a["image"]] = dockerfile
    return images


def _check_release(rel: dict[str, Any], images: dict[str, str]) -> None:
    assert (REPO / rel["chartPath"]).resolve() == CHART.resolve()
    assert rel["name"] == RELEASE and rel["namespace"] and rel["createNamespace"] is True
    for f in rel["valuesFiles"]:
        assert (REPO / f).is_file(), f
    templates = rel["setValueTemplates"]
    # skaffold names an artifact's values IMAGE_REPO_<image> / IMAGE_TAG_<image>, '-' written as '_'
    for image in images:
        key = image.replace("-", "_")
        prefix = "cudaImage" if image.endswith("-cuda") else "image"
        assert templates[f"{prefix}.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
        assert re.fullmatch(rf"\{{\{{\.IMAGE_TAG_{key}\}}\}}(@\{{\{{\.IMAGE_DIGEST_{key}\}}\}})?",
                            templates[f"{prefix}.tag"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in templates:
        top, sub = key.split(".")
        assert sub in values[top], f"setValueTemplates {key}: no such value"


def test_base_config_builds_and_deploys_the_chart() -> None:
    cfg = _config()
    assert re.fullmatch(r"skaffold/v4beta\d+", cfg["apiVersion"]) and cfg["kind"] == "Config"
    images = _check_build(cfg["build"])
    assert images == {"s3-platform": "docker/Dockerfile"}
    assert cfg["build"]["local"]["push"] is False
    (rel,) = cfg["deploy"]["helm"]["releases"]
    _check_release(rel, images)


def test_cpu_and_gpu_profiles() -> None:
    profiles = {p["name"]: p for p in _config()["profiles"]}
    assert set(profiles) == {"cpu", "gpu"}
    (cpu,) = profiles["cpu"]["deploy"]["helm"]["releases"]
    _check_release(cpu, {"s3-platform": "docker/Dockerfile"})
    assert cpu["valuesFiles"] == ["deploy/helm/s3/values-cpu.yaml"]
    gpu_images = _check_build(profiles["gpu"]["build"])
    assert gpu_images == {"s3-platform": "docker/Dockerfile", "s3-platform-cuda": "docker/Dockerfile.cuda"}
    (gpu,) = profiles["gpu"]["deploy"]["helm"]["releases"]
    _check_release(gpu, gpu_images)
    assert gpu["valuesFiles"] == ["deploy/helm/s3/values-gpu.yaml"]


def test_port_forwards_for_the_controller_and_grafana() -> None:
    forwards = _config()["portForward"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    controller = [f for f in forwards if f["resourceName"] == f"{RELEASE}-controller"]
    assert {f["port"] for f in controller} == set(values["controller"]["ports"].values())
    assert all(f["resourceType"] == "service" and f["namespace"] == RELEASE for f in controller)
    (grafana,) = [f for f in forwards if "grafana" in f["resourceName"]]
    assert grafana["resourceType"] == "service" and grafana["localPort"] == 3000
