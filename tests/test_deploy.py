"""deploy/: manifests against the KubeRay CRD schemas and Kubernetes' own schemas, secrets, entrypoints, image."""

from __future__ import annotations

import copy
import functools
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CRDS = ROOT.parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
KUBERNETES_VERSION = "1.33"  # oldest Kubernetes the manifests target (CronJob timeZone is GA from 1.27)
SECRET_NAME = "headrouter-s3"


def _documents() -> list[tuple[str, dict]]:
    """(where, object) for every manifest, plus the RayJob templates kept inside ConfigMaps."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for n, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            docs.append((f"{path.name}#{n}", doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        docs.append((f"{path.name}#{n}:{key}", yaml.safe_load(text)))
    return docs


DOCS = _documents()


def _by_kind(kind: str) -> list[tuple[str, dict]]:
    return [(where, doc) for where, doc in DOCS if doc["kind"] == kind]


@functools.cache
def _crd_schema(kind: str, version: str) -> dict:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v["served"], f"{kind} {version} is not served"
            return _closed(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
    raise AssertionError(f"{kind} has no version {version}")


def _closed(schema: dict) -> dict:
    """Unknown fields are errors: the API server would silently prune them, so a typo would vanish unnoticed."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        for value in schema.values():
            if isinstance(value, dict):
                _closed(value)
            elif isinstance(value, list):
                for item in value:
                    _closed(item)
    return schema


def _crd_errors(doc: dict) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    validator = jsonschema.Draft7Validator(_crd_schema(doc["kind"], version))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_manifests_cover_every_object_the_guide_promises():
    kinds = sorted({doc["kind"] for _, doc in DOCS})
    assert kinds == [
        "ConfigMap",
        "CronJob",
        "RayCluster",
        "RayCronJob",
        "RayJob",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    assert len(_by_kind("RayJob")) == 2  # rayjob.yaml and the CronJob's template


@pytest.mark.parametrize(
    "where,doc", [d for d in DOCS if d[1]["kind"] in CRD_FILES], ids=lambda x: str(x)[:40]
)
def test_kuberay_objects_validate_against_the_crd_schema(where, doc):
    assert doc["metadata"].get("name") or doc["metadata"].get("generateName"), where
    assert _crd_errors(doc) == [], where


def test_rayjob_embedded_cluster_spec_validates_as_a_raycluster_spec():
    jobs = [(w, d["spec"]) for w, d in _by_kind("RayJob")] + [
        (w, d["spec"]["jobTemplate"]) for w, d in _by_kind("RayCronJob")
    ]
    assert len(jobs) == 3
    for where, spec in jobs:
        cluster = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": "x"},
            "spec": spec["rayClusterSpec"],
        }
        assert _crd_errors(cluster) == [], where


def test_the_strict_crd_check_catches_typos_and_wrong_types():
    _, job = _by_kind("RayJob")[0]
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinish"] = True  # missing "es"
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    del bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]
    errors = "\n".join(_crd_errors(bad))
    assert "shutdownAfterJobFinish" in errors and "'four' is not of type 'integer'" in errors
    assert "'groupName' is a required property" in errors


def _kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate carries Kubernetes' JSON schemas"
    )


@pytest.mark.parametrize(
    "where,doc", [d for d in DOCS if d[1]["kind"] not in CRD_FILES], ids=lambda x: str(x)[:40]
)
def test_core_objects_validate_against_kubernetes_schemas(where, doc):
    kv = _kubernetes_validate()
    kv.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError with the path


def test_the_core_schema_check_catches_typos_and_wrong_types():
    kv = _kubernetes_validate()
    _, cron = _by_kind("CronJob")[0]
    bad = copy.deepcopy(cron)
    bad["spec"]["concurrencyPolicyy"] = "Forbid"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSION, strict=True)
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "zero"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSION, strict=True)


def test_pod_templates_inside_kuberay_objects_validate_as_kubernetes_pod_templates():
    kv = _kubernetes_validate()
    n = 0
    for _, doc in DOCS:
        for template in _pod_templates(doc):
            obj = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
            n += 1
    assert n == 9  # head + worker in four Ray cluster specs, and the CronJob launcher


def test_core_objects_have_the_fields_their_kinds_require():
    """A check that needs no schema package: what the API server rejects outright when missing."""
    required = {
        "ServiceAccount": [],
        "Role": ["rules"],
        "RoleBinding": ["roleRef.apiGroup", "roleRef.kind", "roleRef.name", "subjects"],
        "ConfigMap": ["data"],
        "CronJob": ["spec.schedule", "spec.jobTemplate.spec.template.spec.containers"],
    }
    for where, doc in DOCS:
        if doc["kind"] in CRD_FILES:
            continue
        assert doc["apiVersion"] and doc["metadata"]["name"], where
        for dotted in required[doc["kind"]]:
            value = doc
            for key in dotted.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            assert value, f"{where}: {dotted} missing"
    (_, cron), (_, binding), (_, role), (_, account) = (
        _by_kind("CronJob")[0], _by_kind("RoleBinding")[0], _by_kind("Role")[0], _by_kind("ServiceAccount")[0],
    )  # fmt: skip
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert (
        pod["restartPolicy"] in ("Never", "OnFailure")
        and pod["serviceAccountName"] == account["metadata"]["name"]
    )
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": account["metadata"]["name"]}
    assert {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["create", "get", "list", "watch"],
    } in role["rules"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    mounted = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert mounted == {cm["metadata"]["name"] for _, cm in _by_kind("ConfigMap")}
    assert "/etc/headrouter/rayjob.yaml" in pod["containers"][0]["args"][0]


# --- secrets --------------------------------------------------------------------------------------------------

SECRET_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|SESSION)", re.I)


def test_no_inline_secrets_and_every_ray_container_gets_the_storage_secret():
    assert not _by_kind("Secret"), "Secrets are created by the operator (kubectl create secret), not shipped"
    for path in K8S.glob("*.yaml"):
        text = path.read_text()
        # a value after the name, other than the "..." placeholder of the kubectl create secret examples
        assert not re.search(r"AWS_SECRET_ACCESS_KEY[\"']?\s*[:=]\s*(?!\.\.\.)[^\s.]", text), path.name
        assert not re.search(r"(AKIA|ASIA)[0-9A-Z]{16}", text), f"{path.name}: an access key id"
    ray_containers = 0
    for where, doc in DOCS:
        for template in _pod_templates(doc):
            for c in template["spec"]["containers"]:
                for env in c.get("env", []):
                    if SECRET_ENV.search(env["name"]):
                        assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (where, env)
                if doc["kind"] in CRD_FILES:
                    ray_containers += 1
                    refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
                    assert refs == [SECRET_NAME], (where, c["name"])
    assert ray_containers == 8  # head + GPU worker in four cluster specs


# --- entrypoints ----------------------------------------------------------------------------------------------


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for where, doc in DOCS:
        if doc["kind"] == "ConfigMap":  # its RayJob template is parsed as a document of its own
            continue
        for text in _strings(doc):
            for match in re.finditer(r"python -m jobs\.\w+[^\n]*", " ".join(text.split())):
                found.append((where, shlex.split(match.group(0))))
    return found


def test_manifest_entrypoints_exist_and_accept_their_flags():
    commands = _commands()
    assert len(commands) == 3  # rayjob.yaml, raycronjob.yaml, the CronJob's RayJob template
    modules = sorted({argv[2] for _, argv in commands})
    assert modules == ["jobs.nightly", "jobs.run"], modules
    for module in modules:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0 and "--input" in proc.stdout, f"{module} --help:\n{proc.stderr[-2000:]}"
    # the exact flags and values in the manifests parse with the modules' own parsers (a typo raises UsageError)
    for where, argv in commands:
        parse_args = importlib.import_module(argv[2]).parse_args
        opts = parse_args(argv[3:])[0]
        run = getattr(opts, "run", opts)
        assert run.model.startswith("s3://") and run.gpus_per_worker > 0 and run.pushgateway, where
        assert "nightly" in run.job_name if argv[2] == "jobs.nightly" else "nightly" not in run.job_name


def test_entrypoint_sizing_matches_the_worker_pods():
    """--gpus-per-worker must fit a worker pod's GPUs, and the image and Ray version agree everywhere."""
    ray_pin = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    images = set()
    for where, spec in _cluster_specs():
        assert spec["rayVersion"] == ray_pin, where
        for group in spec["workerGroupSpecs"]:
            container = group["template"]["spec"]["containers"][0]
            gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
            assert int(group["rayStartParams"]["num-gpus"]) == gpus, where
            assert int(container["resources"]["requests"]["nvidia.com/gpu"]) == gpus, where
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], where
        for template in _pod_templates({"spec": spec}):
            images |= {c["image"] for c in template["spec"]["containers"]}
    assert len(images) == 1, images
    cache = re.search(r"HEADROUTER_CACHE=(\S+)", (ROOT / "deploy" / "Dockerfile").read_text()).group(1)
    # the model cache lives on the pod's scratch volume, not in the image layer
    for where, spec in _cluster_specs():
        for group in spec["workerGroupSpecs"]:
            mounts = group["template"]["spec"]["containers"][0]["volumeMounts"]
            assert any(cache.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts), where
    for where, argv in _commands():
        gpus = float(argv[argv.index("--gpus-per-worker") + 1])
        assert 0 < gpus <= 1, where


def _cluster_specs():
    for where, doc in DOCS:
        if doc["kind"] == "RayCluster":
            yield where, doc["spec"]
        elif doc["kind"] == "RayJob":
            yield where, doc["spec"]["rayClusterSpec"]
        elif doc["kind"] == "RayCronJob":
            yield where, doc["spec"]["jobTemplate"]["rayClusterSpec"]


def _pod_templates(doc: dict):
    """Every PodTemplateSpec in an object (Ray head/worker groups, a CronJob's job)."""
    if isinstance(doc, dict):
        if "template" in doc and isinstance(doc["template"], dict) and "spec" in doc["template"]:
            if "containers" in doc["template"]["spec"]:
                yield doc["template"]
        for value in doc.values():
            yield from _pod_templates(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _pod_templates(item)


def _strings(doc):
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for value in doc.values():
            yield from _strings(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _strings(item)


# --- the image ------------------------------------------------------------------------------------------------


def _dockerfile_runs() -> list[str]:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    logical = re.sub(r"\\\n\s*", " ", text)  # join continued lines
    return [line.strip()[4:] for line in logical.splitlines() if line.strip().startswith("RUN ")]


def test_image_installs_what_make_test_installs():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    runs = _dockerfile_runs()
    pips = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert len(pips) == 3, pips
    torch_line, req_line, project_line = pips
    # last, the project itself without dependencies (everything it needs came pinned from the lines above)
    assert project_line == "pip install --no-deps /app"
    assert dockerfile.index("COPY . /app") < dockerfile.index("RUN " + project_line)
    # torch first, alone, pinned to the Makefile's version
    make_torch = re.search(r"pip install[^\n]*\btorch==([\w.]+)", makefile).group(1)
    arg_torch = re.search(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert arg_torch == make_torch
    assert re.search(r'"torch==\$\{TORCH_VERSION\}"', torch_line)
    assert " -r " not in torch_line and "requirements" not in torch_line
    # then the one requirements list with the same constraints
    assert re.search(r"-r requirements\.txt -c constraints\.txt", req_line)
    assert re.search(r"pip install -q -r requirements\.txt -c constraints\.txt", makefile)
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copies[0].split()[1:3] == ["requirements.txt", "constraints.txt"]
    assert dockerfile.index(copies[0]) < dockerfile.index(req_line.split("&&")[0].strip())
    # never torchvision, and no second copy of the pins
    assert "torchvision" not in dockerfile.replace("never torchvision", "")
    for name in ("requirements.txt", "constraints.txt"):
        assert not re.search(r"^\s*torch(vision)?\s*[=<>~]", (ROOT / name).read_text(), re.M), name
    assert not re.search(r"pip install [^\n]*==", req_line), "pins belong in constraints.txt"
    assert re.search(r"apt-get install[^\n]*\bffmpeg\b", " ".join(runs))
    # torch 2.13.0's PyPI wheel is the CUDA 13.0 build: the base image's CUDA matches it
    assert re.search(r"^FROM nvidia/cuda:13\.0\.\d+-base-ubuntu", dockerfile, re.M)
