"""cluster/: KubeRay manifests against the RayCluster/RayJob CRD schemas, runtime env, Dockerfile."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, FormatChecker, ValidationError

from palign_ray.config import load_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
# The CRDs come from conftest's `kuberay_crds` fixture (PALIGN_DATA_DIR/../kuberay-crds; skipped when absent).
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
SHARED_MOUNT = "/mnt/shared"
IMAGE_APP_DIR = "/app/"  # where cluster/Dockerfile puts the repo
# Not Kubernetes manifests: runtime envs for `ray job submit`.
NOT_MANIFESTS = {"runtime_env.yaml", "runtime_env.local.yaml"}

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~5x faster on the 2 MB of CRDs


def _load_all(path: Path) -> list[Any]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in CLUSTER.glob("*.yaml") if p.name not in NOT_MANIFESTS)


def _docs(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in manifest_files() for d in _load_all(p) if d.get("kind") == kind]


# --- CRD schema → JSON-schema validator -------------------------------------------------------


def k8s_schema(node: Any) -> Any:
    """An openAPIV3Schema as the API server applies it, in plain JSON-schema terms.

    - Unknown fields are errors (kubectl's default strict field validation): every object with
      `properties` and no `additionalProperties` is closed, unless it preserves unknown fields.
    - `x-kubernetes-int-or-string` without `anyOf` means integer or string.
    - `nullable: true` admits null.
    CEL rules (`x-kubernetes-validations`) are not evaluated: see test_no_cel_guarded_fields.
    """
    if isinstance(node, list):
        return [k8s_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: k8s_schema(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _format_checker() -> FormatChecker:
    fc = FormatChecker()

    @fc.checks("int32")
    def _int32(v: object) -> bool:
        return not isinstance(v, int) or -(2**31) <= v < 2**31

    @fc.checks("int64")
    def _int64(v: object) -> bool:
        return not isinstance(v, int) or -(2**63) <= v < 2**63

    return fc


def _served_storage_v1(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"], "v1 must be the served storage version"
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="session")
def crd_schemas(kuberay_crds: Path) -> dict[str, dict[str, Any]]:
    """kind → raw v1 openAPIV3Schema (the 2 MB of YAML is parsed once per session)."""
    out = {}
    for kind, name in CRD_FILES.items():
        (crd,) = _load_all(kuberay_crds / name)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
        out[kind] = _served_storage_v1(crd)
    return out


@pytest.fixture(scope="session")
def validators(crd_schemas) -> dict[str, Draft7Validator]:
    fc = _format_checker()
    return {
        kind: Draft7Validator(k8s_schema(s), format_checker=fc) for kind, s in crd_schemas.items()
    }


def schema_errors(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    """Every violation as `path: message` (empty = valid)."""
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}" for e in errors]


_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_manifest(validators: dict[str, Draft7Validator], doc: dict[str, Any]) -> list[str]:
    """Errors of one KubeRay manifest: apiVersion/kind/name, then the CRD schema."""
    kind = doc.get("kind")
    if kind not in validators:
        return [f"no schema for kind {kind!r}"]
    errors = []
    if doc.get("apiVersion") != "ray.io/v1":
        errors.append(f"apiVersion: {doc.get('apiVersion')!r} is not 'ray.io/v1'")
    name = (doc.get("metadata") or {}).get("name", "")
    # KubeRay derives Service names from it: a DNS-1123 label, at most 63 characters.
    if not _DNS1123.match(name) or len(name) > 63:
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 label")
    return errors + schema_errors(validators[kind], doc)


# --- every manifest is valid ------------------------------------------------------------------


def test_crds_are_v1_served_and_storage(crd_schemas):
    assert set(crd_schemas) == {"RayCluster", "RayJob"}
    assert "rayClusterSpec" in crd_schemas["RayJob"]["properties"]["spec"]["properties"]


def test_cluster_dir_has_raycluster_and_rayjob():
    kinds = {d.get("kind") for p in manifest_files() for d in _load_all(p)}
    assert {"RayCluster", "RayJob"} <= kinds


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid(path, validators):
    docs = _load_all(path)
    assert docs, f"{path.name}: empty"
    for doc in docs:
        if doc.get("kind") == "PersistentVolumeClaim":
            errors = pvc_errors(doc)
        else:
            errors = check_manifest(validators, doc)
        assert not errors, f"{path.name} ({doc.get('kind')}):\n" + "\n".join(errors)


def pvc_errors(doc: dict[str, Any]) -> list[str]:
    """The shared volume: core v1 (no CRD here), so its few fields that matter are checked by hand."""
    spec = doc.get("spec", {})
    errors = [] if doc.get("apiVersion") == "v1" else ["apiVersion must be v1"]
    if "ReadWriteMany" not in spec.get("accessModes", []):
        errors.append("spec.accessModes: head and workers on different nodes need ReadWriteMany")
    if not re.match(
        r"^[0-9]+(Ki|Mi|Gi|Ti|Pi)$",
        str(spec.get("resources", {}).get("requests", {}).get("storage", "")),
    ):
        errors.append("spec.resources.requests.storage: missing or not a binary quantity")
    return errors


def test_embedded_rayclusterspec_is_a_valid_raycluster(validators):
    for path, job in _docs("RayJob"):
        as_cluster = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": job["metadata"]["name"]},
            "spec": job["spec"]["rayClusterSpec"],
        }
        errors = check_manifest(validators, as_cluster)
        assert not errors, f"{path.name} rayClusterSpec:\n" + "\n".join(errors)


def test_rayjob_cluster_is_the_raycluster_spec():
    ((_, cluster),) = _docs("RayCluster")
    for path, job in _docs("RayJob"):
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], (
            f"{path.name}: rayClusterSpec drifted from raycluster.yaml"
        )


def _guarded_paths(node: Any, path: str = "") -> set[str]:
    """Schema paths (spec.a.b) carrying CEL rules, which jsonschema cannot evaluate."""
    found = set()
    if isinstance(node, dict):
        if "x-kubernetes-validations" in node:
            found.add(path)
        for key, child in node.get("properties", {}).items():
            found |= _guarded_paths(child, f"{path}.{key}" if path else key)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                found |= _guarded_paths(node[key], f"{path}[]")
    return found


def _doc_paths(node: Any, path: str = "") -> set[str]:
    out = {path} if path else set()
    if isinstance(node, dict):
        for k, v in node.items():
            out |= _doc_paths(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for v in node:
            out |= _doc_paths(v, f"{path}[]")
    return out


def test_no_cel_guarded_fields(crd_schemas):
    """Fields with CEL rules are not checked here, so the manifests must not set them."""
    for kind, schema in crd_schemas.items():
        guarded = _guarded_paths(schema)
        assert guarded, f"{kind}: expected some CEL-guarded fields in the CRD"
        for path, doc in _docs(kind):
            used = guarded & _doc_paths(doc)
            assert not used, (
                f"{path.name} sets CEL-guarded fields {sorted(used)}: validate them another way"
            )


# --- the validation can fail ------------------------------------------------------------------


def _rayjob() -> dict[str, Any]:
    ((_, job),) = _docs("RayJob")[:1]
    return copy.deepcopy(job)


def _raycluster() -> dict[str, Any]:
    ((_, cluster),) = _docs("RayCluster")[:1]
    return copy.deepcopy(cluster)


def _mutations() -> list[tuple[str, str, Any, str]]:
    """(id, kind, mutate(doc) → None, expected error text); each makes a valid manifest invalid."""

    def misspelled_top(d):
        d["spec"]["shutdownAfterJobFinish"] = d["spec"].pop("shutdownAfterJobFinishes")

    def misspelled_in_pod(d):
        c = d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        c["imagePullPolicyy"] = c.pop("imagePullPolicy")

    def misspelled_in_embedded(d):
        d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3

    def wrong_type(d):
        d["spec"]["backoffLimit"] = "2"

    def int_start_param(d):  # a classic: rayStartParams values must be strings
        d["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0

    def int32_overflow(d):
        d["spec"]["activeDeadlineSeconds"] = 2**31

    def missing_required(d):
        del d["spec"]["workerGroupSpecs"][0]["groupName"]

    def bad_enum(d):
        d["spec"]["autoscalerOptions"]["upscalingMode"] = "Fast"

    def bad_quantity(d):
        res = d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
        res["limits"]["memory"] = "512 GB"

    def wrong_api_version(d):
        d["apiVersion"] = "ray.io/v1alpha2"

    return [
        (
            "misspelled_top_level_field",
            "RayJob",
            misspelled_top,
            "'shutdownAfterJobFinish' was unexpected",
        ),
        (
            "misspelled_pod_field",
            "RayCluster",
            misspelled_in_pod,
            "'imagePullPolicyy' was unexpected",
        ),
        (
            "misspelled_embedded_cluster_field",
            "RayJob",
            misspelled_in_embedded,
            "'maxReplica' was unexpected",
        ),
        ("string_for_integer", "RayJob", wrong_type, "backoffLimit: '2' is not of type 'integer'"),
        (
            "integer_ray_start_param",
            "RayCluster",
            int_start_param,
            "num-cpus: 0 is not of type 'string'",
        ),
        ("int32_overflow", "RayJob", int32_overflow, "is not a 'int32'"),
        (
            "missing_required_groupName",
            "RayCluster",
            missing_required,
            "'groupName' is a required property",
        ),
        ("bad_enum", "RayCluster", bad_enum, "'Fast' is not one of"),
        ("bad_quantity", "RayCluster", bad_quantity, "'512 GB' does not match"),
        ("wrong_api_version", "RayJob", wrong_api_version, "is not 'ray.io/v1'"),
    ]


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"), [m[1:] for m in _mutations()], ids=[m[0] for m in _mutations()]
)
def test_validation_rejects_broken_manifest(kind, mutate, expected, validators):
    doc = _rayjob() if kind == "RayJob" else _raycluster()
    assert not check_manifest(validators, doc), "the unmodified manifest must be valid"
    mutate(doc)
    errors = check_manifest(validators, doc)
    assert len(errors) == 1 and expected in errors[0], errors


def test_error_names_the_misspelled_field(validators):
    doc = _rayjob()
    doc["spec"]["ttlSecondAfterFinished"] = 60
    (error,) = check_manifest(validators, doc)
    assert "ttlSecondAfterFinished" in error and error.startswith("spec:")
    with pytest.raises(ValidationError):
        validators["RayJob"].validate(doc)


# --- what the manifests must say --------------------------------------------------------------


def test_rayjob_lifecycle_settings():
    for path, job in _docs("RayJob"):
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, path.name
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
        assert spec["backoffLimit"] >= 1, "a retry (on a fresh cluster) resumes from the run dir"
        assert spec["submitterConfig"]["backoffLimit"] >= 1
        submitter = spec["submitterPodTemplate"]["spec"]
        assert submitter["restartPolicy"] == "Never"
        assert "runtimeEnvYAML" in spec and "working_dir" not in yaml.safe_load(
            spec["runtimeEnvYAML"]
        )


def test_rayjob_driver_does_not_run_on_the_head():
    """The entrypoint asks for a CPU; the head offers none, so Ray places the driver on a worker node."""
    ((_, cluster),) = _docs("RayCluster")
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for path, job in _docs("RayJob"):
        assert job["spec"].get("entrypointNumCpus", 0) >= 1, path.name
        assert (
            job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        ), path.name


def _entrypoint_config(entrypoint: str) -> Path:
    m = re.fullmatch(r"python -m jobs\.distill --config (\S+)( .*)?", entrypoint)
    assert m, f"entrypoint {entrypoint!r} is not `python -m jobs.distill --config FILE ...`"
    cfg = m.group(1)
    assert cfg.startswith(IMAGE_APP_DIR), (
        f"{cfg}: use the absolute path in the image ({IMAGE_APP_DIR}...)"
    )
    return REPO / cfg.removeprefix(IMAGE_APP_DIR)


def test_rayjob_entrypoint_config_loads_and_lives_on_shared_storage():
    for path, job in _docs("RayJob"):
        cfg_path = _entrypoint_config(job["spec"]["entrypoint"])
        cfg = load_config(cfg_path)
        # A retry is a new cluster: only the shared volume survives it.
        assert cfg.run.run_dir.startswith(SHARED_MOUNT + "/"), (
            f"{path.name}: run_dir {cfg.run.run_dir}"
        )
        assert cfg.problems.source == "builtin" or cfg.problems.path.startswith(SHARED_MOUNT + "/")


def _pod_specs(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def _shared_claim() -> str:
    ((_, pvc),) = _docs("PersistentVolumeClaim")
    return pvc["metadata"]["name"]


def test_shared_volume_is_mounted_at_the_same_path_everywhere():
    claim = _shared_claim()
    for _, cluster in _docs("RayCluster"):
        for pod in _pod_specs(cluster["spec"]):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert SHARED_MOUNT in mounts, f"{container['name']}: {SHARED_MOUNT} not mounted"
                assert volumes[mounts[SHARED_MOUNT]]["persistentVolumeClaim"]["claimName"] == claim


def _gpus(container: dict[str, Any]) -> int:
    return int(container["resources"].get("limits", {}).get("nvidia.com/gpu", 0))


def test_gpu_worker_group_fits_the_job_configs():
    ((_, cluster),) = _docs("RayCluster")
    spec = cluster["spec"]
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    assert all(_gpus(c) == 0 for c in spec["headGroupSpec"]["template"]["spec"]["containers"]), (
        "CPU head"
    )
    gpu_groups = [
        g for g in spec["workerGroupSpecs"] if _gpus(g["template"]["spec"]["containers"][0])
    ]
    assert gpu_groups, "no GPU worker group"
    assert spec["enableInTreeAutoscaling"] is True
    for g in gpu_groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    per_pod = max(_gpus(g["template"]["spec"]["containers"][0]) for g in gpu_groups)
    total = sum(
        _gpus(g["template"]["spec"]["containers"][0]) * g["maxReplicas"] for g in gpu_groups
    )
    for cfg_path in sorted((REPO / "jobs" / "configs").glob("*.yaml")):
        cfg = load_config(cfg_path)
        if not cfg.sft.use_gpu:
            continue  # the CPU default
        # A tensor-parallel engine must fit on one node; training ranks may span nodes.
        assert cfg.engine.tensor_parallel_size <= per_pod, cfg_path.name
        assert cfg.ray.num_gpus_per_actor == cfg.engine.tensor_parallel_size, cfg_path.name
        assert cfg.sft.num_workers <= total, cfg_path.name


def test_one_image_and_ray_version_matches_the_pins():
    ((_, cluster),) = _docs("RayCluster")
    pin = re.search(
        r"^ray\[[^\]]*\]==([0-9.]+)$", (REPO / "requirements" / "gpu.txt").read_text(), re.M
    )
    assert pin, "requirements/gpu.txt must pin ray"
    assert cluster["spec"]["rayVersion"] == pin.group(1)
    images = {c["image"] for pod in _pod_specs(cluster["spec"]) for c in pod["containers"]}
    for _, job in _docs("RayJob"):
        images |= {c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1, f"one image for head, workers and submitter, got {images}"


# --- runtime env ------------------------------------------------------------------------------


def _runtime_env() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


def test_runtime_env_installs_nothing_and_excludes_local_state():
    env = _runtime_env()
    assert not {"pip", "conda", "uv", "py_executable", "container", "image_uri"} & set(env), (
        "the image has everything"
    )
    for pattern in (".venv/", ".git/", "runs/", "bench/results/"):
        assert pattern in env["excludes"], pattern
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    for key in ("PALIGN_CACHE_DIR", "HF_HOME"):
        assert env["env_vars"][key].startswith(SHARED_MOUNT + "/"), key
    assert all(isinstance(v, str) for v in env["env_vars"].values()), (
        "env_vars values must be strings"
    )


@pytest.mark.parametrize("name", sorted(NOT_MANIFESTS))
def test_runtime_env_is_accepted_by_ray(name):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / name).read_text())
    parsed = RuntimeEnv(**env)
    assert parsed["env_vars"] == env["env_vars"]


def test_local_runtime_env_uploads_the_same_and_has_no_cluster_paths():
    local = yaml.safe_load((CLUSTER / "runtime_env.local.yaml").read_text())
    assert local["excludes"] == _runtime_env()["excludes"]
    assert not any(SHARED_MOUNT in v for v in local["env_vars"].values())


def test_rayjob_runtime_env_matches_runtime_env_yaml():
    for path, job in _docs("RayJob"):
        assert (
            yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"] == _runtime_env()["env_vars"]
        ), path.name


# --- image recipe (no docker engine here: static checks only) ---------------------------------


def dockerfile_instructions(text: str) -> list[str]:
    """One string per instruction: comments dropped, `\\` continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def test_dockerfile_installs_the_project_for_gpu():
    text = (CLUSTER / "Dockerfile").read_text()
    lines = dockerfile_instructions(text)
    assert lines[0].startswith("FROM nvidia/cuda:"), "CUDA base image"
    assert "COPY requirements/ requirements/" in lines
    # The frozen CUDA lock, as `make install DEVICE=gpu` installs it (not a fresh pip resolution of gpu.txt).
    assert any(ln.startswith("RUN") and "--no-deps -r requirements/gpu.lock" in ln for ln in lines)
    assert not any("requirements/gpu.txt" in ln for ln in lines)
    assert any("make install DEVICE=gpu" in ln for ln in lines), "installs through the Makefile"
    assert lines.index("COPY requirements/ requirements/") < lines.index("COPY . .")
    assert "WORKDIR /app" in lines and any(
        ln.startswith("ENV") and "PYTHONPATH=/app" in ln for ln in lines
    )
    assert any("python3.11" in ln for ln in lines), "pyproject requires Python 3.11"
    assert any("wget" in ln for ln in lines), "KubeRay's default probes call wget"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignore)


def test_cel_guard_check_can_fail(crd_schemas):
    job = _rayjob()
    job["spec"]["rayClusterSpec"]["managedBy"] = "ray.io/kuberay-operator"
    guarded = _guarded_paths(crd_schemas["RayJob"])
    assert guarded & _doc_paths(job) == {"spec.rayClusterSpec.managedBy"}


def test_every_ray_node_reaps_a_killed_workers_children():
    """Issue 29.2: vLLM's EngineCore outlived a force-killed actor and held ~90% of the GPU."""
    from palign_ray.ray_env import REAP_ENV

    for path, doc in [*_docs("RayCluster"), *_docs("RayJob")]:
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for g in groups:
            for c in g["template"]["spec"]["containers"]:
                env = {e["name"]: e["value"] for e in c.get("env", [])}
                assert env.items() >= REAP_ENV.items(), (path.name, c["name"])


# --- sites: one node shape per site, rendered onto the same manifests (issue 29.5) --------------


def _render_site_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_site", CLUSTER / "render_site.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SITES = sorted((CLUSTER / "sites").glob("*.yaml"))


def test_the_committed_manifests_are_the_h100_site():
    """Hard-coded 8 GPUs, 64 CPUs, 512Gi and maxReplicas 2 now live in a site file; the committed
    manifests must not drift from it."""
    render = _render_site_module()
    site = render.load_site(CLUSTER / "sites" / "h100x8.yaml")
    for name in render.MANIFESTS:
        for doc in _load_all(CLUSTER / name):
            assert render.site_values(doc) == site, name
            assert render.apply_site(doc, site) == doc, name  # rendering it changes nothing


@pytest.mark.parametrize("site_file", SITES, ids=lambda p: p.stem)
def test_every_site_renders_valid_manifests(site_file, tmp_path, validators):
    render = _render_site_module()
    site = render.load_site(site_file)
    for path in render.render(site_file, tmp_path):
        for doc in _load_all(path):
            errors = check_manifest(validators, doc)
            assert not errors, f"{site_file.stem}/{path.name}:\n" + "\n".join(errors)
            assert render.site_values(doc) == site  # RayJob: its embedded cluster spec
    assert {p.stem for p in SITES} >= {"h100x8", "a100x4"}


def test_a_bad_site_file_is_refused(tmp_path):
    render = _render_site_module()
    good = yaml.safe_load((CLUSTER / "sites" / "a100x4.yaml").read_text())
    for bad, match in (
        ({**good, "gpus": 4}, "unknown keys"),
        ({**good, "gpus_per_node": "4"}, "gpus_per_node must be int"),
        ({**good, "replicas": 9}, "min_replicas <= replicas <= max_replicas"),
    ):
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ValueError, match=match):
            render.load_site(path)
