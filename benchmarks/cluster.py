"""Two Ray nodes on this machine, configs/prod.yaml's graph on them, and its autoscaling under load.

A CPU head node (Serve's controller, proxy and the ingress) and a worker node that declares fake
GPUs (`ray start --num-gpus`, started through ray.cluster_utils like a second `ray start`), so
prod.yaml's `num_gpus: 1` model replicas can only be placed there; they run on its CPU with a
tiny synthetic checkpoint (CUDA is not really there, and the engine sees that).

    --check      placement and one stream through the graph, printed as JSON (tests/service/test_multinode.py)
    (default)    also drive a ramp of load and record replicas from min to max and back down,
                 saved with a plot under benchmarks/results/cluster_autoscaling.*

    .venv/bin/python benchmarks/cluster.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from common import REPO, SEED_SENTENCE, Outcomes, png, save, table, time_request

PROD_CONFIG = REPO / "configs" / "prod.yaml"
FAKE_GPUS = 4
# The fake GPU node offers GPUs only (prod.yaml's 2 CPUs per model replica would not fit 4 replicas on this
# machine), so CPU work (ingress) cannot take the room model replicas need there.
MODEL_CPUS = 0
# prod.yaml's autoscaling with delays short enough to watch (its own: 10 s up, 300 s down)
AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": FAKE_GPUS,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 2,
    "downscale_delay_s": 10,
}


def start(port: int, voices: str):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve_app.app import from_config_file

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0})
    cluster.add_node(num_cpus=0, num_gpus=FAKE_GPUS)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    app, _ = from_config_file(
        PROD_CONFIG,
        deployment_overrides={
            "VoxCPMModel": {
                "ray_actor_options": {"num_cpus": MODEL_CPUS, "num_gpus": 1},
                "autoscaling_config": AUTOSCALING,
                "max_ongoing_requests": 7,
                "graceful_shutdown_timeout_s": 30,
            }
        },
        args_overrides={"voices_dir": voices},
        source=str(REPO / "checkpoints" / "tiny-voxcpm1.5"),
        synthetic_preset="tiny-voxcpm1.5",
        device="auto",
        optimize=False,
    )
    serve.run(app, name="voxcpm", route_prefix="/")
    return cluster


def placement(url: str) -> dict:
    """Which node each replica runs on, as Ray's state API and our /api/gpu/status see it."""
    import ray
    from ray.util.state import list_actors

    head = ray.get_runtime_context().get_node_id()
    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    by_class = {}
    for actor in actors:
        if actor.class_name.startswith("ServeReplica:voxcpm:"):
            by_class.setdefault(actor.class_name.rsplit(":", 1)[1], []).append(actor.node_id)
    status = requests.get(f"{url}/api/gpu/status", timeout=10).json()
    gpu_nodes = [node["node_id"] for node in status["nodes"]]
    return {
        "head_node": head,
        "gpu_nodes": gpu_nodes,
        "ingress_nodes": by_class.get("TTSIngress", []),
        "status_board_nodes": by_class.get("StatusBoard", []),
        "model_nodes": by_class.get("VoxCPMModel", []),
        "model_nodes_reported": [replica["node_id"] for replica in status["replicas"]],
        "model_devices": [replica["device"] for replica in status["replicas"]],
    }


def replica_count() -> int:
    from ray import serve

    deployment = serve.status().applications["voxcpm"].deployments["VoxCPMModel"]
    return sum(n for state, n in deployment.replica_states.items() if str(state).endswith("RUNNING"))


def autoscale(url: str, peak_clients: int, ramp_s: float, hold_s: float, settle_s: float) -> dict:
    """Clients added one by one up to the peak, held, then all stopped; replicas sampled throughout.
    A shed request (503) is retried after its Retry-After, as the contract asks of clients; any other
    error or a broken stream counts as failed."""
    started = time.perf_counter()
    stop_at = started + ramp_s + hold_s
    samples: list[tuple[float, int, int]] = []
    outcomes = Outcomes()
    active = 0
    sampling = threading.Event()

    def sampler() -> None:
        while not sampling.wait(0.5):
            samples.append((time.perf_counter() - started, replica_count(), active))

    def client() -> None:
        nonlocal active
        with outcomes.lock:
            active += 1
        while time.perf_counter() < stop_at:
            outcomes.attempt(url, "/api/tts/stream", {"text": SEED_SENTENCE})
        with outcomes.lock:
            active -= 1

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(peak_clients) as pool:
        for _ in range(peak_clients):
            pool.submit(client)
            time.sleep(ramp_s / peak_clients)
    deadline = time.perf_counter() + settle_s
    while time.perf_counter() < deadline and replica_count() > AUTOSCALING["min_replicas"]:
        time.sleep(0.5)
    time.sleep(2)
    sampling.set()
    watcher.join()
    counts = [n for _, n, _ in samples]
    return {
        "completed": len(outcomes.streams),
        "shed_then_retried": len(outcomes.shed_ms),
        "failed": len(outcomes.errors),
        "samples": samples,
        "peak_replicas": max(counts),
        "final_replicas": counts[-1],
    }


def report(result: dict, where: dict) -> str:
    return (
        "# Autoscaling on a two-node cluster (CPU head + fake-GPU worker)\n\n"
        f"configs/prod.yaml's graph; model replicas `num_gpus: 1` on a worker declaring {FAKE_GPUS} GPUs, "
        f"autoscaling {AUTOSCALING}; tiny synthetic model on a 2-core CPU. Streams of the seed sentence.\n\n"
        + table(
            ["completed", "shed, then retried", "failed", "replicas: min -> peak -> end"],
            [
                [
                    result["completed"],
                    result["shed_then_retried"],
                    result["failed"],
                    f"{AUTOSCALING['min_replicas']} -> {result['peak_replicas']} -> {result['final_replicas']}",
                ]
            ],
        )
        + f"\nModel replicas ran on the GPU node only ({len(set(where['model_nodes']))} node), the ingress on "
        f"the head: {where['ingress_nodes'] == [where['head_node']]}.\n"
    )


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in result["samples"]]
    figure, axis = plt.subplots(figsize=(9, 3.6))
    axis.step(t, [s[1] for s in result["samples"]], where="post", label="model replicas running")
    axis.step(t, [s[2] for s in result["samples"]], where="post", label="concurrent clients", alpha=0.7)
    axis.set(xlabel="seconds", ylim=(0, None), title="Autoscaling from min to max replicas and back")
    axis.legend()
    png(figure, "cluster_autoscaling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="placement and one stream only")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--peak-clients", type=int, default=8)
    parser.add_argument("--ramp", type=float, default=30.0)
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=90.0)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as voices:
        cluster = start(args.port, voices)
        try:
            stream = time_request(url, "/api/tts/stream", {"text": SEED_SENTENCE})
            where = placement(url)
            if args.check:
                print(json.dumps({**where, "stream_audio_s": stream.audio_s}))
                return
            result = autoscale(url, args.peak_clients, args.ramp, args.hold, args.settle)
            save(
                "cluster_autoscaling", {"placement": where, "autoscaling": AUTOSCALING, **result}, report(result, where)
            )
            plot(result)
        finally:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    main()
