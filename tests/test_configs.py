"""configs/*.yaml parse with Ray's own schema and our AppConfig, and keep their promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import from_config_file
from serve_app.config import AppConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
KUBERAY = CONFIG_DIR / "kuberay-rayservice.yaml"
DOCKERFILE = CONFIG_DIR.parent / "Dockerfile"
CONFIGS = sorted(path for path in CONFIG_DIR.glob("*.yaml") if path != KUBERAY)  # Serve configs


def deployments(path: Path) -> dict[str, dict]:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    return {d.name: d.model_dump(exclude_unset=True) for d in schema.applications[0].deployments}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_the_graph(path: Path) -> None:
    _, config = from_config_file(path)
    assert isinstance(config, AppConfig)
    assert set(deployments(path)) == {*(m.deployment_name for m in config.models), "TTSIngress"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_queue_is_bounded(path: Path) -> None:
    """Past capacity Serve's routers refuse at once (503) instead of queueing without end."""
    for name, deployment in deployments(path).items():
        assert deployment["max_ongoing_requests"] >= 1, name
        assert deployment["max_queued_requests"] > 0, name  # -1 would be unbounded


def test_prod_serves_voxcpm15_on_gpus_with_autoscaling() -> None:
    path = next(p for p in CONFIGS if p.name == "prod.yaml")
    raw = yaml.safe_load(path.read_text())
    assert raw["http_options"]["port"] == 7861
    _, config = from_config_file(path)
    (model,) = config.models
    assert model.source == "openbmb/VoxCPM1.5"
    assert model.synthetic_preset is None
    model = deployments(path)["VoxCPMModel"]
    assert model["ray_actor_options"]["num_gpus"] > 0
    autoscaling = model["autoscaling_config"]
    assert autoscaling["min_replicas"] >= 1 and autoscaling["max_replicas"] > autoscaling["min_replicas"]
    assert autoscaling["target_ongoing_requests"] > 0
    assert model["max_queued_requests"] > 0


def test_local_tries_a_real_release_then_falls_back_to_a_synthetic_model() -> None:
    path = next(p for p in CONFIGS if p.name == "local.yaml")
    _, config = from_config_file(path)
    (model,) = config.models
    assert model.source == "openbmb/VoxCPM-0.5B" and model.gpu_source == "openbmb/VoxCPM2"
    assert model.synthetic_preset and model.device == "auto"  # a GPU when the machine has one
    assert deployments(path)["VoxCPMModel"]["ray_actor_options"]["num_gpus"] == 0


def test_container_config_is_local_yaml_in_a_container() -> None:
    """The CPU image's config differs from local.yaml only where a container must: it listens on every
    interface (a published port reaches the container's eth0, not its loopback) and keeps the checkpoint
    and the voices on the image's volumes (Dockerfile: VOLUME)."""
    local = yaml.safe_load((CONFIG_DIR / "local.yaml").read_text())
    container = yaml.safe_load((CONFIG_DIR / "container.yaml").read_text())
    volumes = re.search(r"^VOLUME (.+)$", DOCKERFILE.read_text(), re.M)
    args = container["applications"][0]["args"]
    assert container["http_options"]["host"] == "0.0.0.0"
    assert args["voices_dir"] in json.loads(volumes[1])
    assert Path(args["model"]["source"]).parent.as_posix() in json.loads(volumes[1])
    local["http_options"]["host"] = "0.0.0.0"
    local_args = local["applications"][0]["args"]
    local_args["voices_dir"], local_args["model"]["source"] = args["voices_dir"], args["model"]["source"]
    assert container == local


def test_unknown_args_are_refused() -> None:
    with pytest.raises(ValueError, match="extra"):
        AppConfig.model_validate({"model": {"sourec": "typo"}})


def test_several_models_need_distinct_names_and_deployments() -> None:
    with pytest.raises(ValueError, match="deployment_name"):
        AppConfig.model_validate({"models": [{"name": "a"}, {"name": "b"}]})
    with pytest.raises(ValueError, match="either"):
        AppConfig.model_validate({"model": {"name": "a"}, "models": [{"name": "b"}]})
    config = AppConfig.model_validate(
        {"models": [{"name": "a"}, {"name": "b", "deployment_name": "B"}], "default_model": "b"}
    )
    assert config.default == "b"
    with pytest.raises(ValueError, match="default_model"):
        AppConfig.model_validate({"models": [{"name": "a"}], "default_model": "z"})


class TestImage:
    """The Dockerfile's promises that `docker run`, compose and the README rely on."""

    def test_health_check_asks_ready_on_the_port_the_configs_serve(self) -> None:
        dockerfile = DOCKERFILE.read_text()
        for name in ("prod.yaml", "container.yaml"):  # the GPU and the CPU image's configs
            port = yaml.safe_load((CONFIG_DIR / name).read_text())["http_options"]["port"]
            assert f"EXPOSE {port}\n" in dockerfile
            assert re.search(rf"HEALTHCHECK [^\n]*\\\n\s+CMD curl [^\n]*:{port}/ready", dockerfile)

    def test_docker_stop_sends_the_signal_serve_run_shuts_down_on(self) -> None:
        """`serve run` shuts Serve down and exits 0 on KeyboardInterrupt; SIGTERM would kill it at once."""
        assert re.search(r"^STOPSIGNAL SIGINT$", DOCKERFILE.read_text(), re.M)
        default = re.search(r"^ARG CONFIG=(\S+)$", DOCKERFILE.read_text(), re.M)
        assert (CONFIG_DIR.parent / default[1]).is_file()


class TestKubeRay:
    """configs/kuberay-rayservice.yaml embeds configs/prod.yaml and holds to what KubeRay's controller does
    with it (ray-project/kuberay, ray-operator/controllers/ray/: rayservice_controller.go, common/pod.go,
    common/service.go; samples in ray-operator/config/samples/ray-service.*.yaml)."""

    @pytest.fixture(scope="class")
    def documents(self) -> list[dict]:
        return list(yaml.safe_load_all(KUBERAY.read_text()))

    @pytest.fixture(scope="class")
    def service(self, documents: list[dict]) -> dict:
        (service,) = [doc for doc in documents if doc["kind"] == "RayService"]
        return service

    @pytest.fixture(scope="class")
    def prod(self) -> dict:
        return yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())

    @staticmethod
    def groups(service: dict) -> list[dict]:
        cluster = service["spec"]["rayClusterConfig"]
        return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]

    @staticmethod
    def head(service: dict) -> dict:
        (head,) = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
        return head

    def test_embedded_serve_config_is_prod_yaml(self, service: dict, prod: dict) -> None:
        embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(embedded)  # Ray's own schema
        AppConfig.model_validate(embedded["applications"][0]["args"])
        assert embedded == prod

    def test_gpu_workers_fit_the_model_deployment(self, service: dict) -> None:
        model = deployments(CONFIG_DIR / "prod.yaml")["VoxCPMModel"]
        (gpu_group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        (container,) = gpu_group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        replicas_per_pod = int(limits["nvidia.com/gpu"] / model["ray_actor_options"]["num_gpus"])
        assert replicas_per_pod >= 1
        assert gpu_group["maxReplicas"] * replicas_per_pod >= model["autoscaling_config"]["max_replicas"]
        assert gpu_group["minReplicas"] * replicas_per_pod >= model["autoscaling_config"]["min_replicas"]
        assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
        env = {item["name"]: item.get("value") for item in container["env"]}
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert env["HF_HOME"].startswith("/models") and "/models" in mounts  # the weights' cache on a volume

    def test_an_ingress_replica_on_a_gpu_worker_leaves_the_models_their_cpus(self, service: dict) -> None:
        """KubeRay gives a pod as many Ray CPUs as its CPU limit (common/pod.go), and Ray may place an
        ingress replica on any node: a GPU pod has room for a full load of model replicas plus one."""
        model = deployments(CONFIG_DIR / "prod.yaml")["VoxCPMModel"]["ray_actor_options"]
        ingress = deployments(CONFIG_DIR / "prod.yaml")["TTSIngress"]["ray_actor_options"]
        (gpu_group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        (container,) = gpu_group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        replicas_per_pod = int(limits["nvidia.com/gpu"] / model["num_gpus"])
        assert float(limits["cpu"]) >= replicas_per_pod * model["num_cpus"] + ingress["num_cpus"]
        assert float(self.head(service)["resources"]["limits"]["cpu"]) >= ingress["num_cpus"]

    def test_head_has_no_serve_dependent_probe(self, service: dict) -> None:
        """reconcileServe (rayservice_controller.go) submits serveConfigV2 only once the head pod is Ready,
        and Serve's port answers only after that: a readiness probe on it would never pass. KubeRay checks
        the head's proxy itself at every reconcile (updateHeadPodServeLabel) and keeps its own probes."""
        head = self.head(service)
        assert "readinessProbe" not in head
        assert "livenessProbe" not in head

    def test_every_container_running_a_proxy_names_the_serve_port(self, service: dict, prod: dict) -> None:
        """proxy_location: EveryNode puts a Serve proxy on every pod. KubeRay's worker readiness probe
        (common/pod.go), its head proxy check and the serve Service (common/service.go) use the container
        port named `serve`, and 8000 when none is named."""
        assert prod["proxy_location"] == "EveryNode"
        for group in self.groups(service):
            for container in group["template"]["spec"]["containers"]:
                ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
                assert ports.get("serve") == prod["http_options"]["port"], container["name"]

    def test_workers_leave_the_readiness_probe_to_kuberay(self, service: dict) -> None:
        """KubeRay injects the worker probe that checks the Serve proxy only into a container that has no
        readinessProbe of its own (common/pod.go); without it a worker would take traffic before its proxy."""
        for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                assert "readinessProbe" not in container, container["name"]

    def test_image_is_fully_qualified_and_runs_the_ray_of_ray_version(self, service: dict) -> None:
        """The kubelet pulls the reference as written (a bare name means docker.io, where no such image is);
        KubeRay starts Ray from the image and expects rayVersion to be its Ray (ray-service.*.yaml samples)."""
        images = {c["image"] for g in self.groups(service) for c in g["template"]["spec"]["containers"]}
        (image,) = images
        registry, _, rest = image.partition("/")
        assert "." in registry or ":" in registry, image
        assert ":" in rest.rsplit("/", 1)[-1], f"{image} has no tag"
        base = re.search(r"^ARG BASE_IMAGE=rayproject/ray:([\d.]+)-", DOCKERFILE.read_text(), re.M)
        assert base, "the Dockerfile's default base is Ray's image"
        pinned = re.search(r'"ray\[serve\]==([\d.]+)"', (CONFIG_DIR.parent / "pyproject.toml").read_text())
        assert service["spec"]["rayClusterConfig"]["rayVersion"] == base[1] == pinned[1]

    def test_claims_name_a_storage_class_for_their_access_mode(self, documents: list[dict], service: dict) -> None:
        """A claim that no class can satisfy stays Pending and keeps the pods that mount it (the head
        first) from starting; claims mounted on several nodes need ReadWriteMany, which a cluster's default
        class rarely gives. The manifest says how to fall back to ReadWriteOnce on a single node."""
        claims = {doc["metadata"]["name"]: doc["spec"] for doc in documents if doc["kind"] == "PersistentVolumeClaim"}
        pods_per_claim: dict[str, int] = {}
        for group in self.groups(service):
            pods = group.get("maxReplicas", 1)
            for volume in group["template"]["spec"].get("volumes", []):
                name = volume["persistentVolumeClaim"]["claimName"]
                pods_per_claim[name] = pods_per_claim.get(name, 0) + pods
        assert set(pods_per_claim) <= set(claims)
        for name, claim in claims.items():
            assert claim.get("storageClassName"), name
            if pods_per_claim.get(name, 0) > 1:
                assert claim["accessModes"] == ["ReadWriteMany"], name
        assert "ReadWriteOnce" in KUBERAY.read_text()  # the single-node fallback is written down

    def test_an_upgrade_keeps_the_old_cluster_for_the_longest_stream(self, service: dict, prod: dict) -> None:
        """On upgrade KubeRay moves traffic to the new cluster and deletes the old one after
        rayClusterDeletionDelaySeconds (60 s by default; rayservice_controller.go), cutting streams still
        running there. The field came with KubeRay 1.5.0; the header must not promise older operators."""
        assert service["spec"]["rayClusterDeletionDelaySeconds"] >= prod["http_options"]["request_timeout_s"]
        claimed = re.search(r"KubeRay operator >= (\d+)\.(\d+)", KUBERAY.read_text())
        assert claimed and (int(claimed[1]), int(claimed[2])) >= (1, 5)

    def test_head_mounts_the_voices_the_ingress_saves(self, service: dict) -> None:
        voices = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["voices_dir"]
        assert voices in {mount["mountPath"] for mount in self.head(service)["volumeMounts"]}


def test_grafana_dashboard_charts_only_metrics_we_export() -> None:
    """Every ray_voxcpm_* series the dashboard queries is one serve_app/metrics.py defines."""
    from serve_app import metrics

    defined = set(re.findall(r'"(voxcpm_[a-z_]+)"', Path(metrics.__file__).read_text()))
    dashboard = json.loads((CONFIG_DIR / "grafana-dashboard.json").read_text())
    queried = {
        re.sub(r"_(bucket|total|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"ray_(voxcpm_[a-z_]+)", target["expr"])
    }
    assert queried and queried <= defined, queried - defined
    assert defined <= queried, f"metrics not on the dashboard: {defined - queried}"
