"""The typed app builder behind ``import_path: serve_app.app:build_app`` in configs/*.yaml.

Ray Serve validates the config's ``args:`` against :class:`AppConfig` and calls
:func:`build_app`; per-deployment resources (``num_gpus``, ``autoscaling_config``,
``max_ongoing_requests``) are set in the config's ``deployments:`` by deployment name
(each model's ``deployment_name``, ``TTSIngress``, ``StatusBoard`` and ``JobRunner``). No
``from __future__ import annotations`` here: Serve reads the builder's annotation at run time
to validate ``args``.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from serve_app.ingress.server import TTSIngress
from serve_app.jobs.runner import JobRunner
from serve_app.model.deployment import VoxCPMDeployment
from serve_app.model.status_board import StatusBoard


def build_app(args: AppConfig) -> Application:
    return compose(args)


def compose(args: AppConfig, deployment_options: Mapping[str, Mapping[str, Any]] | None = None) -> Application:
    """The graph: the ingress bound to one model deployment per model, the status board the model replicas
    report to and the ingress reads, and the job runner (bound to the models and the board); with
    per-deployment options."""
    options = deployment_options or {}
    board = StatusBoard.options(**options.get("StatusBoard", {})).bind()
    models = {
        model.name: VoxCPMDeployment.options(name=model.deployment_name, **options.get(model.deployment_name, {})).bind(
            model, args.voices_dir, board, args.adapters_dir
        )
        for model in args.models
    }
    runner = JobRunner.options(**options.get("JobRunner", {})).bind(models, board, args)
    return TTSIngress.options(**options.get("TTSIngress", {})).bind(models, board, runner, args)


def from_config_file(
    path: str | Path,
    app_index: int = 0,
    deployment_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    args_overrides: Mapping[str, Any] | None = None,
    models_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    **default_model_overrides: Any,
) -> tuple[Application, AppConfig]:
    """The application a Serve config file describes, for ``serve.run`` from Python (tests, benchmarks).

    The file is validated with Ray's own schema and :class:`AppConfig`. Overrides replace fields
    of ``args`` (``args_overrides``), of a model by name (``models_overrides``) or of the default
    model (keyword arguments), and of ``deployments:`` entries by deployment name.
    """
    schema = ServeDeploySchema.model_validate(yaml.safe_load(Path(path).read_text()))
    app_schema = schema.applications[app_index]
    config = AppConfig.model_validate({**app_schema.args, **(args_overrides or {})})
    changes = {**(models_overrides or {})}
    changes[config.default] = {**changes.get(config.default, {}), **default_model_overrides}
    models = [{**model.model_dump(), **changes.get(model.name, {})} for model in config.models]
    config = AppConfig.model_validate({**config.model_dump(), "models": models})
    options = {d.name: d.model_dump(exclude_unset=True, exclude={"name"}) for d in app_schema.deployments}
    for name, overrides in (deployment_overrides or {}).items():
        options[name] = {**options.get(name, {}), **overrides}
    # As Serve does for a deployed config: every deployment inherits the app's runtime_env and logging.
    logging_config = app_schema.logging_config or schema.logging_config
    # (Options given replace a deployment's own ray_actor_options whole: start from its own, as Serve merges them.)
    classes = {model.deployment_name: VoxCPMDeployment for model in config.models}
    classes |= {"TTSIngress": TTSIngress, "StatusBoard": StatusBoard, "JobRunner": JobRunner}
    for name, deployment_class in classes.items():
        deployment = options.setdefault(name, {})
        if app_schema.runtime_env:
            actor = deployment.setdefault("ray_actor_options", dict(deployment_class.ray_actor_options or {}))
            actor["runtime_env"] = {**app_schema.runtime_env, **(actor.get("runtime_env") or {})}
        if logging_config is not None:
            deployment.setdefault("logging_config", logging_config.model_dump())
    return compose(config, options), config
