"""The version is pyproject.toml's: the app reads it from the installed package, and the image tags the
deployment files name (which YAML cannot compute) are checked against it here."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from serve_app.ingress.server import create_app
from tests.conftest import REPO

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE_TAG = re.compile(r"voxcpm-serve:([0-9][^\s\"'-]*)-(?:cpu|gpu)")
DEPLOYMENT_FILES = ["compose.yaml", "compose.gpu.yaml", "configs/kuberay-rayservice.yaml", "Dockerfile"]


def test_the_app_reports_the_packages_version() -> None:
    assert create_app().version == importlib.metadata.version("voxcpm-serve") == VERSION


def test_every_image_tag_is_the_version() -> None:
    tags = {name: IMAGE_TAG.findall((REPO / name).read_text()) for name in DEPLOYMENT_FILES}
    assert all(tags.values()), tags
    assert {tag for found in tags.values() for tag in found} == {VERSION}
