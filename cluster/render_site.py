"""The KubeRay manifests for one site: cluster/raycluster.yaml and rayjob.yaml with a site's node shape.

    python cluster/render_site.py cluster/sites/a100x4.yaml --out build/a100x4

writes `raycluster.yaml` and `rayjob.yaml` there (comments are not carried over: the committed files
explain the fields). A site file sets the GPU worker group's name, GPUs/CPUs/memory/shm per node and
its replica counts (see cluster/sites/h100x8.yaml, the committed manifests' own values).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

CLUSTER = Path(__file__).resolve().parent
MANIFESTS = ("raycluster.yaml", "rayjob.yaml")
KEYS = {
    "worker_group": str,
    "gpus_per_node": int,
    "cpus_per_node": int,
    "memory_per_node": str,
    "shm_per_node": str,
    "replicas": int,
    "min_replicas": int,
    "max_replicas": int,
}


def load_site(path: str | Path) -> dict[str, Any]:
    """A site file, every key present and of its type, replicas within [min, max]."""
    site = yaml.safe_load(Path(path).read_text()) or {}
    unknown, missing = sorted(set(site) - set(KEYS)), sorted(set(KEYS) - set(site))
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    for key, tp in KEYS.items():
        if not isinstance(site[key], tp) or isinstance(site[key], bool):
            raise ValueError(f"{path}: {key} must be {tp.__name__}, got {site[key]!r}")
    if not 0 < site["min_replicas"] <= site["replicas"] <= site["max_replicas"]:
        raise ValueError(f"{path}: need 0 < min_replicas <= replicas <= max_replicas")
    return site


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster or RayJob document."""
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def site_values(doc: dict[str, Any]) -> dict[str, Any]:
    """The site values a manifest carries (its one GPU worker group)."""
    (group,) = cluster_spec(doc)["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    req = worker["resources"]["requests"]
    shm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")
    return {
        "worker_group": group["groupName"],
        "gpus_per_node": int(req["nvidia.com/gpu"]),
        "cpus_per_node": int(req["cpu"]),
        "memory_per_node": req["memory"],
        "shm_per_node": shm["emptyDir"]["sizeLimit"],
        "replicas": group["replicas"],
        "min_replicas": group["minReplicas"],
        "max_replicas": group["maxReplicas"],
    }


def apply_site(doc: dict[str, Any], site: dict[str, Any]) -> dict[str, Any]:
    """A copy of a RayCluster/RayJob document with the site's worker shape and replica counts."""
    out = copy.deepcopy(doc)
    (group,) = cluster_spec(out)["workerGroupSpecs"]
    group.update(
        groupName=site["worker_group"],
        replicas=site["replicas"],
        minReplicas=site["min_replicas"],
        maxReplicas=site["max_replicas"],
    )
    (worker,) = group["template"]["spec"]["containers"]
    shape = {
        "cpu": str(site["cpus_per_node"]),
        "memory": site["memory_per_node"],
        "nvidia.com/gpu": str(site["gpus_per_node"]),
    }
    worker["resources"] = {"requests": dict(shape), "limits": dict(shape)}
    for v in group["template"]["spec"]["volumes"]:
        if v["name"] == "dshm":
            v["emptyDir"]["sizeLimit"] = site["shm_per_node"]
    return out


def render(site_file: str | Path, out_dir: str | Path) -> list[Path]:
    site = load_site(site_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MANIFESTS:
        docs = [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]
        text = yaml.safe_dump_all([apply_site(d, site) for d in docs], sort_keys=False)
        (out / name).write_text(f"# rendered by cluster/render_site.py from {site_file}\n{text}")
        written.append(out / name)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("site", help="a site file, e.g. cluster/sites/a100x4.yaml")
    p.add_argument("--out", required=True, help="directory for raycluster.yaml and rayjob.yaml")
    args = p.parse_args()
    for path in render(args.site, args.out):
        print(path)


if __name__ == "__main__":
    main()
