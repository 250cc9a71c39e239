"""deploy/k8s/: every object validates against the Kubernetes JSON schemas (kubernetes-validate
ships them, so this runs offline; strict: unknown fields are errors), and the manifests agree with
each other and with the code: probes on /health/*, the PDB/HPA/Service select the scorer, the
projector's Indexed Job runs `--shard $JOB_COMPLETION_INDEX/N` with N = completions <= buckets,
the ConfigMap names only real settings, the model store volume is the registry the pods read."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from cache.projector import _parse_shard
from service.settings import Settings

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
# the oldest Kubernetes release still commonly run that has every API used here (Indexed Jobs,
# autoscaling/v2, policy/v1 PDBs), and the newest the package ships
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def manifests() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name != "kustomization.yaml":
            out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def obj(kind: str, name: str) -> dict:
    (found,) = [d for _, d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def ids(item: tuple[str, dict]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", manifests(), ids=ids)
def test_every_object_validates_against_the_kubernetes_schema(item, version):
    kubernetes_validate.validate(item[1], version, strict=True)


def test_the_validator_refuses_what_kubernetes_would():
    dep = copy.deepcopy(obj("Deployment", "twin-scorer"))
    dep["spec"]["replicas"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VERSIONS[0], strict=True)
    dep = copy.deepcopy(obj("Deployment", "twin-scorer"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: a misspelt field is an error
        kubernetes_validate.validate(dep, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")
    assert [i["name"] for i in kust["images"]] == ["twin-serving"]


def _scorer() -> tuple[dict, dict]:
    dep = obj("Deployment", "twin-scorer")
    return dep, dep["spec"]["template"]["spec"]["containers"][0]


def test_scorer_probes_resources_and_the_objects_that_select_it():
    dep, c = _scorer()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert int(obj("ConfigMap", "twin-config")["data"]["TWIN_PORT"]) == c["ports"][0]["containerPort"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert c["command"] == ["python", "-m", "service"]
    for kind in ("PodDisruptionBudget", "Service"):
        sel = obj(kind, "twin-scorer")["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel.items() <= labels.items(), kind
    hpa = obj("HorizontalPodAutoscaler", "twin-scorer")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "twin-scorer"}
    assert hpa["minReplicas"] <= dep["spec"]["replicas"] <= hpa["maxReplicas"]
    # the admin token comes from a Secret, never from the ConfigMap
    assert "TWIN_ADMIN_TOKEN" not in obj("ConfigMap", "twin-config")["data"]
    assert any(e["name"] == "TWIN_ADMIN_TOKEN" and "secretKeyRef" in e["valueFrom"] for e in c["env"])


def test_the_config_map_names_only_real_settings():
    known = {f"TWIN_{n.upper()}" for n in Settings.model_fields} | {"REDIS_URL"}
    data = obj("ConfigMap", "twin-config")["data"]
    assert set(data) - known == set(), "not settings of service/settings.py"
    Settings(**{k.removeprefix("TWIN_").lower(): v for k, v in data.items()})  # and they parse


def test_the_model_store_is_the_shared_volume_every_pod_reads():
    pvc = obj("PersistentVolumeClaim", "twin-models")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    root = obj("ConfigMap", "twin-config")["data"]["TWIN_MODEL_ROOT"]
    for kind, name in (("Deployment", "twin-scorer"), ("Job", "twin-projector")):
        spec = obj(kind, name)["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == root]
        assert vols[mount["name"]]["persistentVolumeClaim"]["claimName"] == "twin-models", name


def test_redis_cluster_and_the_url_the_pods_use():
    url = urlsplit(obj("ConfigMap", "twin-config")["data"]["REDIS_URL"])
    assert url.scheme == "redis+cluster"  # cache/connection.py opens a RedisCluster for it
    svc = obj("Service", url.hostname)
    sts = obj("StatefulSet", "redis-cluster")
    headless = obj("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items() and headless["spec"]["selector"].items() <= labels.items()
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes" and args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    script = obj("Job", "redis-cluster-create")["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert f"for i in {' '.join(str(i) for i in range(sts['spec']['replicas']))};" in script


def _projector_argv(index: int) -> list[str]:
    job = obj("Job", "twin-projector")
    c = job["spec"]["template"]["spec"]["containers"][0]
    env = dict(obj("ConfigMap", "twin-config")["data"])
    env.update({e["name"]: e["value"] for e in c["env"]})
    env.update(JOB_COMPLETION_INDEX=str(index), PATH=os.environ["PATH"])
    script = c["command"][2].replace("exec python -m cache.projector", "printf '%s\\n'", 1)
    return subprocess.run(c["command"][:2] + [script], env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_the_projector_is_an_indexed_job_whose_pods_take_their_shard():
    job = obj("Job", "twin-projector")["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    n = job["completions"]
    buckets = int(obj("ConfigMap", "twin-config")["data"]["TWIN_REDIS_BUCKETS"])
    assert n <= buckets, "a shard owns whole buckets: more shards than buckets would leave some idle"
    for i in (0, n - 1):
        argv = _projector_argv(i)
        assert _parse_shard(argv[argv.index("--shard") + 1]) == (i, n)
        assert argv[argv.index("--n-buckets") + 1] == str(buckets)
        assert argv[argv.index("--registry") + 1] == "/models" and "--version" not in argv  # empty -> active
