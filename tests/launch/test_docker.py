"""docker/: both Dockerfiles pass hadolint; the KubeRay RayJob validates against the shipped schema
and runs a scaling config whose Ray workers fill the cluster's GPUs. (No Docker engine or
Kubernetes here: nothing is built or applied.)"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from ..conftest import REPO

DOCKER = REPO / "docker"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([HADOLINT, str(DOCKER / dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_image_builds_every_kernel():
    text = (DOCKER / "Dockerfile.gpu").read_text()
    assert "FROM ${CUDA_IMAGE}" in text and "nvidia/cuda:" in text and "devel" in text
    for needed in ("DS_BUILD_OPS=1", "--no-build-isolation -r requirements/cuda-kernels.txt",
                   "import deepspeed, mamba_ssm, causal_conv1d, triton, ray, mlflow"):
        assert needed in text, needed


@pytest.mark.parametrize("dockerfile, lock", [("Dockerfile", "cpu.txt"), ("Dockerfile.gpu", "cuda.txt")])
def test_images_install_the_lock(dockerfile, lock):
    """Each image syncs its platform's lock before the sources arrive, then installs NeuroGraph without
    resolving anything (--no-deps) and runs `neurograph doctor`, which reports departures from the lock."""
    text = (DOCKER / dockerfile).read_text()
    sync = text.index("uv pip sync --python /opt/venv/bin/python")
    assert text.index("COPY requirements/ requirements/") < sync < text.index("COPY . .")
    assert f"requirements/{lock}" in text[sync:text.index("\n", text.index(lock, sync))]
    assert "--no-deps -e ." in text and "neurograph doctor" in text


def manifest() -> dict:
    return yaml.safe_load((DOCKER / "raycluster.yaml").read_text())


def validate(doc: dict) -> None:
    jsonschema.validate(doc, json.loads((DOCKER / "rayjob.schema.json").read_text()),
                        cls=jsonschema.Draft202012Validator)


def test_rayjob_validates_and_fills_the_cluster():
    job = manifest()
    validate(job)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # the Ray the image installs (pyproject, as tested)
    config_path = job["spec"]["entrypoint"].split("--config ")[1].split()[0]
    cfg = yaml.safe_load((REPO / config_path).read_text())
    gpus = sum(g["replicas"] * int(g["rayStartParams"]["num-gpus"]) for g in cluster["workerGroupSpecs"])
    ray_cfg = cfg["launcher"]["ray"]
    assert cfg["launcher"]["kind"] == "ray"
    assert ray_cfg["num_workers"] * ray_cfg["gpus_per_worker"] == gpus == 64
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"]
        assert int(group["rayStartParams"]["num-cpus"]) >= ray_cfg["cpus_per_worker"] * int(group["rayStartParams"]["num-gpus"])
        assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
    assert cfg["trainer"]["run_dir"].startswith("/shared/") and cfg["data"]["path"].startswith("/shared/")


@pytest.mark.parametrize("break_it", [
    lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replica=8),  # typo
    lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 8}),  # not a string
    lambda j: j["spec"].update(entrypoint="python train.py"),
    lambda j: j.update(kind="RayCluster"),
])
def test_schema_rejects_broken_manifests(break_it):
    job = copy.deepcopy(manifest())
    break_it(job)
    with pytest.raises(jsonschema.ValidationError):
        validate(job)
