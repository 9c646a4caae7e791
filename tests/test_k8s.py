"""deploy/k8s: every manifest valid against the Kubernetes API schema of a current release, and tied to the code.

No cluster runs here. kubernetes-validate checks each object offline against the OpenAPI schemas it bundles (strict:
an unknown field is an error); `kubectl kustomize`, where kubectl is installed, renders both variants as
`kubectl apply -k` would, and every rendered object is checked the same way. The facts that tie the manifests to
the service are checked against the code itself: the probe paths and port, the keys file's mount, the drain.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import load
from service.http import keys
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
VERSION = kubernetes_validate.latest_version()
KUSTOMIZATIONS = [K8S / "kustomization.yaml", K8S / "base" / "kustomization.yaml", K8S / "gpu" / "kustomization.yaml"]
RESOURCES = sorted((K8S / "base").glob("*.yaml"))
RESOURCES.remove(K8S / "base" / "kustomization.yaml")
GPU_PATCH = K8S / "gpu" / "deployment.yaml"
# what a pod's memory must hold, measured (bench/README.md; its "MB" are MiB, bench/serve_load.py's RSS / 2**20):
# every server process with one worker and the digits model, the soak's resident memory after its faulty run; a
# worker process at idle, and its highest peak above idle under the attacks (decoding within its budget)
MEASURED = {"idle_mib": ("resident memory 392.4 -> 406.3 MB", 406.3), "worker_idle_mib": ("idle RSS 266 MB", 266),
            "attack_peak_mib": ("| 805.7 | 4.3 / 177.8 |", 805.7)}  # fmt: skip


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def valid(doc: dict[str, Any]) -> None:
    """kubernetes-validate's check of one object; its error names the field."""
    try:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{doc['kind']} {doc['metadata'].get('name')}: {e.message} at {list(e.path)}")


def kind(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == name]
    return doc


def merged(base: Any, patch: Any) -> Any:
    """A strategic-merge patch as kustomize applies this one: mappings merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {k: merged(base[k], v) if k in base else v for k, v in {**base, **patch}.items()}
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in base):
        by_name = {i["name"]: i for i in base}
        for item in patch:
            by_name[item["name"]] = merged(by_name[item["name"]], item) if item["name"] in by_name else item
        return list(by_name.values())
    return patch


BASE = [doc for path in RESOURCES for doc in documents(path)]
DEPLOYMENT = kind(BASE, "Deployment")
CONTAINER = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]


def test_every_manifest_is_valid_kubernetes():
    assert {d["kind"] for d in BASE} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in BASE:
        valid(doc)
    valid(merged(DEPLOYMENT, documents(GPU_PATCH)[0]))  # the GPU variant's Deployment


def test_the_kustomizations_name_every_file_and_what_a_user_sets():
    base, cpu, gpu = (yaml.safe_load(p.read_text()) for p in (KUSTOMIZATIONS[1], KUSTOMIZATIONS[0], KUSTOMIZATIONS[2]))
    assert sorted(base["resources"]) == sorted(p.name for p in RESOURCES)
    assert cpu["resources"] == ["base"] and gpu["resources"] == ["../base"]
    assert [p["path"] for p in gpu["patches"]] == [GPU_PATCH.name]
    for variant, tag in ((cpu, "cpu"), (gpu, "gpu")):  # the tags deploy/container.sh gives each VARIANT
        assert variant["images"] == [{"name": CONTAINER["image"], "newName": "classifier", "newTag": tag}]
        assert variant["replicas"] == [{"name": DEPLOYMENT["metadata"]["name"], "count": 2}]
    # the keys file the Secret is made of is the user's, never committed
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/k8s/base/api-keys"], cwd=ROOT)
    assert ignored.returncode == 0


def test_probes_and_port_are_what_the_service_serves():
    from bentoml._internal.configuration.containers import BentoMLContainer

    port = BentoMLContainer.http.port.get()  # `bentoml serve`'s port where nothing sets another: the image's
    assert CONTAINER["ports"] == [{"name": "http", "containerPort": port}]
    probes = {name: CONTAINER[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": {"path": "/readyz", "port": "http"},
                      "readinessProbe": {"path": "/readyz", "port": "http"},
                      "livenessProbe": {"path": "/livez", "port": "http"}}  # fmt: skip
    # the kubelet sends no API key: both paths must be among the ones auth leaves open
    assert {p["path"] for p in probes.values()} <= keys.HEALTH
    # the warm-up may take minutes on a GPU: the startup probe allows five before liveness counts
    startup = CONTAINER["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    service = kind(BASE, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert kind(BASE, "PodDisruptionBudget")["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]
    target = kind(BASE, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    from bentoml._internal.container.generate import BENTO_UID_GID  # the user BentoML's Dockerfile runs as

    assert DEPLOYMENT["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == BENTO_UID_GID


def test_the_secret_is_mounted_where_the_image_config_reads_keys():
    config = load(K8S / "serving.yaml")
    keys = Path(config.auth.api_keys_file)
    [mount] = CONTAINER["volumeMounts"]
    assert "subPath" not in mount  # the kubelet never updates a subPath mount, so new keys would not arrive
    [volume] = [v for v in DEPLOYMENT["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    [item] = volume["secret"]["items"]
    assert Path(mount["mountPath"]) / item["path"] == keys
    [generator] = yaml.safe_load(KUSTOMIZATIONS[1].read_text())["secretGenerator"]
    assert generator["name"] == volume["secret"]["secretName"] and generator["files"] == [item["key"]]


def test_the_grace_period_outlasts_prestop_and_the_drain(tmp_path):
    spec = DEPLOYMENT["spec"]["template"]["spec"]
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    args = CONTAINER["args"]
    drain = int(args[args.index("--timeout-graceful-shutdown") + 1])
    # the service's own request timeout, from the service as the image's config builds it
    code = "import json; from service.service import Classifier; print(json.dumps(Classifier.config['traffic']))"
    env = {**os.environ, "SERVING_CONFIG": str(K8S / "serving.yaml"), "BENTOML_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    request_timeout = json.loads(out.stdout.strip().splitlines()[-1])["timeout"]
    assert drain >= request_timeout  # a request still running when the drain starts may finish
    assert spec["terminationGracePeriodSeconds"] > int(command[1]) + drain
    strategy = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # a rollout takes no pod away before its successor is ready


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_memory_limit_holds_idle_and_every_workers_decoding_budget():
    """The pod's limit against what the image's own config lets its workers hold, from the figures measured in
    bench/README.md, not from the manifest's own arithmetic: idle, each more worker's idle, and per worker the larger
    of its measured peak and its decoding budget plus the parts a request keeps in memory before they spool to disk."""
    from starlette.formparsers import MultiPartParser

    from service.http.forms import WHOLE_BODY_BYTES

    bench = (ROOT / "bench" / "README.md").read_text()
    assert all(text in bench for text, _ in MEASURED.values()), "the figures below are the ones bench/README.md holds"
    idle, worker_idle, attack_peak = (value for _, value in MEASURED.values())
    config = load(K8S / "serving.yaml")
    limits = config.limits
    parts = max(WHOLE_BODY_BYTES, limits.max_images_per_request * MultiPartParser.spool_max_size) / 2**20
    per_worker = max(attack_peak, limits.decode_budget_bytes / 2**20 + parts)
    need = idle + (config.workers - 1) * worker_idle + config.workers * per_worker
    for deployment in (DEPLOYMENT, merged(DEPLOYMENT, documents(GPU_PATCH)[0])):
        resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert mebibytes(resources["limits"]["memory"]) >= need, (resources["limits"]["memory"], f"{need:.0f}Mi")
        assert resources["requests"] == resources["limits"]  # requests = limits: never the first pod evicted
    gpu = merged(DEPLOYMENT, documents(GPU_PATCH)[0])["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1" and "nvidia.com/gpu" not in CONTAINER["resources"]["limits"]


def _kubectl_version() -> str:
    shown = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r'(?:Client Version: |GitVersion:")(v[0-9.]+)', shown)  # kubectl 1.28 and later | earlier
    return f"kubectl {found[1] if found else '(version unknown)'}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("variant", ["", "gpu"], ids=["cpu", "gpu"])
def test_kubectl_renders_a_valid_deployment(tmp_path, variant):
    """What `kubectl apply -k deploy/k8s[/gpu]` would send, rendered offline from a copy with a keys file."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "base" / "api-keys").write_text("key-one\nkey-two\n")
    rendered = subprocess.run(["kubectl", "kustomize", str(copy / variant)], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    # Debian 12's kubectl (kubernetes-client 1.20.2) embeds kustomize 2, which knows no `replicas` or `patches`: it
    # fails here with `json: unknown field "replicas"` (seen; kubectl 1.32 with kustomize 5.5 renders both)
    assert rendered.returncode == 0, f"{_kubectl_version()}: {rendered.stderr}"
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(d["kind"] for d in docs) == sorted(["Secret", *(d["kind"] for d in BASE)])
    for doc in docs:
        valid(doc)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "classifier"
    deployment = kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"classifier:{variant or 'cpu'}" and deployment["spec"]["replicas"] == 2
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (variant == "gpu")
    secret = kind(docs, "Secret")
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "key-one\nkey-two\n"
    assert secret["metadata"]["name"] == deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
