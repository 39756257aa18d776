"""Run as: python tests/node_loss_job.py MODEL — a generation stage on a simulated 3-node cluster
(ray.cluster_utils.Cluster) loses a worker node, without grace, after its first output batch."""

import json
import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
if __name__ == "__main__":
    import ray
    from ray.cluster_utils import Cluster
    model = sys.argv[1]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]  # one actor (1 CPU) per worker
    ray.init(address=cluster.address)
    from palign_ray.config import EngineConfig, RayConfig
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.generation import generate_batches
    items = [{"problem_id": f"p{i:02d}", "prompt": f"Count from {i} to {i + 20}."} for i in range(32)]
    rows, removed = [], None
    for b in generate_batches(items, model=model, engine=EngineConfig(max_model_len=512),
                              ray_cfg=RayConfig(num_actors=2, num_cpus_per_actor=1.0, batch_size=2),
                              sampling=SamplingSpec(max_tokens=24, temperature=0.7), seed=1):
        rows += b
        if removed is None:
            # The head has no CPUs and each worker fits one 1-CPU actor, so each worker hosts an actor.
            victim = workers[1]
            cluster.remove_node(victim, allow_graceful=False)
            removed = victim.node_id
            print("REMOVED", removed, "after", len(rows), "rows", flush=True)
    ids = [r["problem_id"] for r in rows]
    print("RESULT", json.dumps({"n": len(ids), "unique": len(set(ids)), "ids": sorted(set(ids)),
                                "expected": sorted(i["problem_id"] for i in items)}), flush=True)
    ray.shutdown()
    cluster.shutdown()
