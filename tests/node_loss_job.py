"""Run as: python tests/node_loss_job.py MODEL [generate|judge] — one stage on a simulated 3-node cluster
(ray.cluster_utils.Cluster) loses a worker node, without grace, after the stage's first output batch.

judge mode also judges the same traces undisturbed first (same cluster shape, both workers alive) and
prints both results, so the test can check that the rows recomputed after the loss are identical."""

import json
import os
import sys

ACTOR_CPUS = 1.5

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def start_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    # Actors take ACTOR_CPUS: none fits on the 1-CPU head, one on each 2-CPU worker, so each worker
    # hosts an actor; the head's CPU runs Ray Data's read tasks (ListFiles asks for a whole CPU, and a
    # pool that holds every CPU starves it forever).
    workers = [cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1") for _ in range(2)]
    return cluster, workers


def generation_batches(model, on_first_part):
    """`palign generate`'s streaming job; `on_first_part` runs when a part is committed."""
    from palign_ray.config import Config, EngineConfig, RayConfig, RunConfig, TeacherConfig
    from palign_ray.generation import generate_job

    items = [
        {"problem_id": f"p{i:02d}", "prompt": f"Count from {i} to {i + 20}."} for i in range(32)
    ]
    cfg = Config(
        run=RunConfig(seed=1, chunk_size=2),
        teacher=TeacherConfig(model=model, max_tokens=24, temperature=0.7),
        engine=EngineConfig(max_model_len=512),
        ray=RayConfig(num_actors=2, num_cpus_per_actor=ACTOR_CPUS, batch_size=2),
    )
    rows = _stream(generate_job(cfg), items, on_first_part)
    return items, ({"problem_id": r["problem_id"], "out": r.get("generations")} for r in rows)


def judge_batches_of(model, on_first_part):
    """The truncate stage's streaming job; `on_first_part` runs when a part is committed."""
    from palign_ray.config import Config, EngineConfig, JudgeConfig, RayConfig, RunConfig
    from palign_ray.judge.contract import check_input
    from palign_ray.judge.stage import judge_job

    items = [
        {
            "problem_id": f"j{i:02d}",
            "question": f"What is {i} + {i + 1}?",
            "answer": str(2 * i + 1),
            "cot": " ".join(f"Step {j}: we add {i} and {j} with care." for j in range(1, 9)),
        }
        for i in range(16)
    ]
    ok, bad = check_input(items)
    assert not bad, bad
    cfg = Config(
        run=RunConfig(seed=3, chunk_size=2),
        judge=JudgeConfig(model=model),
        engine=EngineConfig(max_model_len=1024, max_num_seqs=16),
        ray=RayConfig(num_actors=2, num_cpus_per_actor=ACTOR_CPUS, batch_size=2),
    )
    keep = ("prefix_sentences", "num_probes", "num_rounds", "is_sufficient")
    rows = _stream(judge_job(cfg), ok, on_first_part)
    return items, ({"problem_id": r["problem_id"], "out": [r.get(k) for k in keep]} for r in rows)


def _stream(job, items, on_first_part):
    """`items` through the streaming `job` (workers write the parts); `on_first_part` runs when a part is
    committed. Every row out: committed output and quarantine."""
    import tempfile
    from pathlib import Path

    from palign_ray.artifacts import StageDir
    from palign_ray.streaming import run_stream

    tmp = Path(tempfile.mkdtemp(prefix=f"node-loss-{job.stage}-"))
    src, sd = StageDir(tmp / "input"), StageDir(tmp / job.stage)
    src.write_part(items, [])
    run_stream(job, src.output_files(), sd, progress=lambda total, done: _FirstPart(on_first_part))
    return sd.output_rows() + sd.quarantine_rows()


class _FirstPart:
    """A progress bar stand-in that fires once, on the first committed part."""

    def __init__(self, fn):
        self.fn, self.fired = fn, False

    def update(self, n):
        if not self.fired:
            self.fired = True
            self.fn()

    def close(self):
        pass


def run_once(model, mode, remove):
    import ray

    cluster, workers = start_cluster()
    ray.init(address=cluster.address)
    removed = []

    def remove_worker():
        if remove and not removed:
            cluster.remove_node(workers[1], allow_graceful=False)
            removed.append(workers[1].node_id)
            print("REMOVED", removed[0], flush=True)

    if mode == "judge":
        items, rows_iter = judge_batches_of(model, remove_worker)
    else:
        items, rows_iter = generation_batches(model, remove_worker)
    rows = []
    for row in rows_iter:
        rows.append(row)
        remove_worker()
    ray.shutdown()
    cluster.shutdown()
    return items, rows


if __name__ == "__main__":
    model, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "generate")
    reference = run_once(model, mode, remove=False)[1] if mode == "judge" else None
    items, rows = run_once(model, mode, remove=True)
    ids = [r["problem_id"] for r in rows]
    result = {
        "n": len(ids),
        "unique": len(set(ids)),
        "ids": sorted(set(ids)),
        "expected": sorted(i["problem_id"] for i in items),
    }
    if reference is not None:
        ref = {r["problem_id"]: r["out"] for r in reference}
        result["differs_from_undisturbed"] = sorted(
            r["problem_id"] for r in rows if ref.get(r["problem_id"]) != r["out"]
        )
    print("RESULT", json.dumps(result), flush=True)
