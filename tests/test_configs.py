"""configs/*.yaml parse with Ray's own schema and our AppConfig, and keep their promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import from_config_file
from serve_app.config import AppConfig

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def deployments(path: Path) -> dict[str, dict]:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    return {d.name: d.model_dump(exclude_unset=True) for d in schema.applications[0].deployments}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_the_graph(path: Path) -> None:
    _, config = from_config_file(path)
    assert isinstance(config, AppConfig)
    assert set(deployments(path)) == {*(m.deployment_name for m in config.models), "TTSIngress"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_status_calls_keep_a_slot_on_every_replica(path: Path) -> None:
    _, config = from_config_file(path)
    for model in config.models:
        assert deployments(path)[model.deployment_name]["max_ongoing_requests"] > 1 + model.max_waiting_requests


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


def test_local_runs_on_cpu_with_a_synthetic_model() -> None:
    path = next(p for p in CONFIGS if p.name == "local.yaml")
    _, config = from_config_file(path)
    (model,) = config.models
    assert model.synthetic_preset and model.device == "cpu"
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
