"""configs/*.yaml parse with Ray's own schema and our AppConfig, and keep their promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import from_config_file
from serve_app.config import AppConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
KUBERAY = CONFIG_DIR / "kuberay-rayservice.yaml"
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


class TestKubeRay:
    """configs/kuberay-rayservice.yaml embeds configs/prod.yaml and gives its deployments what they ask for."""

    @pytest.fixture(scope="class")
    def service(self) -> dict:
        documents = list(yaml.safe_load_all(KUBERAY.read_text()))
        (service,) = [doc for doc in documents if doc["kind"] == "RayService"]
        return service

    def test_embedded_serve_config_is_prod_yaml(self, service: dict) -> None:
        embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(embedded)  # Ray's own schema
        AppConfig.model_validate(embedded["applications"][0]["args"])
        assert embedded == yaml.safe_load((CONFIG_DIR / "prod.yaml").read_text())

    def test_gpu_workers_fit_the_model_deployment(self, service: dict) -> None:
        model = deployments(CONFIG_DIR / "prod.yaml")["VoxCPMModel"]
        (gpu_group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        (container,) = gpu_group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        replicas_per_pod = int(limits["nvidia.com/gpu"] / model["ray_actor_options"]["num_gpus"])
        assert replicas_per_pod >= 1
        assert float(limits["cpu"]) >= replicas_per_pod * model["ray_actor_options"]["num_cpus"]
        assert gpu_group["maxReplicas"] * replicas_per_pod >= model["autoscaling_config"]["max_replicas"]
        assert gpu_group["minReplicas"] * replicas_per_pod >= model["autoscaling_config"]["min_replicas"]
        assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
        env = {item["name"]: item.get("value") for item in container["env"]}
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert env["HF_HOME"].startswith("/models") and "/models" in mounts  # the weights' cache on a volume

    def test_head_runs_the_ingress_and_probes_health(self, service: dict) -> None:
        ingress = deployments(CONFIG_DIR / "prod.yaml")["TTSIngress"]
        (head,) = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
        assert float(head["resources"]["limits"]["cpu"]) >= ingress["ray_actor_options"]["num_cpus"]
        assert head["readinessProbe"]["httpGet"] == {"path": "/health", "port": 7861}
        voices = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["voices_dir"]
        assert voices in {mount["mountPath"] for mount in head["volumeMounts"]}


def test_grafana_dashboard_charts_only_metrics_we_export() -> None:
    """Every ray_voxcpm_* series the dashboard queries is one serve_app/metrics.py defines."""
    import json
    import re

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
