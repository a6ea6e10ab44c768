"""The typed app builder behind ``import_path: serve_app.app:build_app`` in configs/*.yaml.

Ray Serve validates the config's ``args:`` against :class:`AppConfig` and calls
:func:`build_app`; per-deployment resources (``num_gpus``, ``autoscaling_config``,
``max_ongoing_requests``) are set in the config's ``deployments:`` by deployment name
(``VoxCPMModel``, ``TTSIngress``). No ``from __future__ import annotations`` here: Serve reads
the builder's annotation at run time to validate ``args``.
"""

from ray.serve import Application

from serve_app.config import AppConfig
from serve_app.ingress.app import TTSIngress
from serve_app.model.deployment import VoxCPMDeployment


def build_app(args: AppConfig) -> Application:
    return TTSIngress.bind(VoxCPMDeployment.bind(args.model), args)
