"""configs/*.yaml parse with Ray's own schema and our AppConfig, and keep their promises."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import from_config_file
from serve_app.config import AppConfig
from tests.conftest import REPO

CONFIG_DIR = REPO / "configs"
KUBERAY = CONFIG_DIR / "kuberay-rayservice.yaml"
ROOT = CONFIG_DIR.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
RAY_POD_LABEL = {"ray.io/is-ray-node": "yes"}  # KubeRay's labelPod (common/pod.go) puts it on every Ray pod
CONFIGS = sorted(path for path in CONFIG_DIR.glob("*.yaml") if path != KUBERAY)  # Serve configs


# KubeRay 1.5.1's AutoscalerOptions (apis/ray/v1/raycluster_types.go): the only fields the autoscaler sidecar
# takes; its CRD (config/crd/bases/ray.io_rayservices.yaml) prunes or refuses any other.
AUTOSCALER_OPTIONS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode", "version",
    "env", "envFrom", "volumeMounts",
}  # fmt: skip
QUANTITY_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity(value: str | int) -> int:
    """A Kubernetes quantity in bytes (the binary and decimal suffixes the manifest may use)."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(value))
    assert match, value
    return int(match[1]) * QUANTITY_SUFFIXES.get(match[2] or "", 1)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions, (keyword, the rest), continuation lines joined, comments left out."""
    steps: list[tuple[str, str]] = []
    pending: list[str] = []
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending.append(line.strip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            word, _, rest = " ".join(pending).partition(" ")
            steps.append((word, rest.strip()))
            pending = []
    return steps


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
    for key in ("adapters_dir", "lexicons_dir", "jobs_dir", "usage_dir"):
        assert Path(args[key]).parent.as_posix() == args["voices_dir"]  # on the voices' volume
    assert Path(args["model"]["source"]).parent.as_posix() in json.loads(volumes[1])
    local["http_options"]["host"] = "0.0.0.0"
    local_args = local["applications"][0]["args"]
    local_args["voices_dir"], local_args["model"]["source"] = args["voices_dir"], args["model"]["source"]
    for key in ("adapters_dir", "lexicons_dir", "jobs_dir", "usage_dir"):
        local_args[key] = args[key]
    assert container == local


def test_derived_configs_are_generated_from_their_sources() -> None:
    """container.yaml from local.yaml, the KubeRay manifest's serveConfigV2 from prod.yaml (`make configs`)."""
    result = subprocess.run(
        [sys.executable, str(CONFIG_DIR / "generate.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_replica_is_health_checked_and_a_stuck_step_is_bounded(path: Path) -> None:
    """Serve probes both deployments' replicas every few seconds (``check_health``) and a model's step counts as
    stuck past ``max_step_s``: a dead or hung replica is found and replaced within a minute or so."""
    from serve_app.ingress.server import TTSIngress
    from serve_app.model.deployment import VoxCPMDeployment

    _, config = from_config_file(path)
    for name, deployment in deployments(path).items():
        code = (TTSIngress if name == "TTSIngress" else VoxCPMDeployment)._deployment_config
        assert deployment.get("health_check_period_s", code.health_check_period_s) <= 10, name
        assert deployment.get("health_check_timeout_s", code.health_check_timeout_s) <= 60, name
    assert all(0 < model.max_step_s <= 120 for model in config.models)
    with pytest.raises(ValueError, match="max_step_s"):
        AppConfig.model_validate({"model": {"max_step_s": 0}})


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

    def test_entrypoint_checks_the_keys_then_runs_the_command_under_tini(self) -> None:
        """tini stays PID 1 (it reaps Ray's orphans and passes SIGINT on); the check runs between it and CMD.
        The script must be in the build context (.dockerignore lets only named paths in) and executable."""
        dockerfile = DOCKERFILE.read_text()
        entrypoint = re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
        path = "/usr/local/bin/voxcpm-serve-entrypoint"
        assert json.loads(entrypoint[1]) == ["tini", "--", path]
        assert re.search(rf"^COPY --chmod=755 docker/entrypoint\.sh {re.escape(path)}$", dockerfile, re.M)
        ignored = (ROOT / ".dockerignore").read_text().splitlines()
        assert ignored.index("!docker/entrypoint.sh") > ignored.index("*")
        assert os.access(ENTRYPOINT, os.X_OK)

    def test_no_key_is_baked_into_the_image(self) -> None:
        """ENV and ARG values stay in the image's config and history for anyone who pulls it."""
        for line in DOCKERFILE.read_text().splitlines():
            if re.match(r"\s*(ENV|ARG)\b", line) or line.startswith(" "):
                assert not re.search(r"VOXCPM_SERVE_(API_KEYS|ADMIN_KEYS|ALLOW_ANONYMOUS)", line), line

    def test_compose_files_require_the_keys(self) -> None:
        """compose.yaml publishes the port beyond loopback: `${VAR:?message}` makes compose refuse to start
        when the variable is unset or empty (Compose specification, interpolation), before the image's own
        check; neither file asks for anonymous access."""
        required = re.compile(r"^\$\{VOXCPM_SERVE_API_KEYS:\?[^$}]+\}$")
        base = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["voxcpm"]
        assert base["ports"] and required.match(base["environment"]["VOXCPM_SERVE_API_KEYS"])
        for name in ("compose.yaml", "compose.gpu.yaml"):
            for service in yaml.safe_load((ROOT / name).read_text())["services"].values():
                environment = service.get("environment", {})
                assert "VOXCPM_SERVE_ALLOW_ANONYMOUS" not in environment, name
                if "VOXCPM_SERVE_API_KEYS" in environment:
                    assert required.match(environment["VOXCPM_SERVE_API_KEYS"]), name

    def test_the_service_user_cannot_become_root(self) -> None:
        """Ray's image (the GPU base) installs sudo and gives `ray` passwordless sudo through /etc/sudoers
        and the sudo group. The Dockerfile removes sudo, its configuration and the group membership, strips
        every setuid/setgid bit, and fails the build if sudo or such a file is left; no other instruction
        names sudo, no package is installed after that step, and the service runs as `ray`."""
        steps = instructions(DOCKERFILE.read_text())
        (hardening,) = [i for i, (word, text) in enumerate(steps) if word == "RUN" and "/etc/sudoers" in text]
        text = steps[hardening][1]
        assert re.search(r"SUDO_FORCE_REMOVE=yes apt-get purge -y sudo;", text)  # sudo's prerm refuses otherwise
        assert "rm -rf /etc/sudoers /etc/sudoers.d;" in text
        assert re.search(r"gpasswd -d ray sudo\b", text)
        assert "find / -xdev -type f -perm /6000 -exec chmod a-s {} +;" in text
        assert "if command -v sudo; then exit 1; fi;" in text  # `! command -v sudo` would not fail under set -e
        assert text.rstrip().endswith('test -z "$(find / -xdev -type f -perm /6000)"')
        assert text.startswith("set -eux;")
        for i, (_, other) in enumerate(steps):
            if i != hardening:
                assert not re.search(r"\bsudo|NOPASSWD", other), other
            if "apt-get install" in other or "dpkg -i" in other:
                assert i < hardening, other
        users = [i for i, (word, other) in enumerate(steps) if word == "USER"]
        assert steps[users[-1]] == ("USER", "ray") and users[-1] > hardening

    def test_forwarded_headers_are_trusted_from_no_one(self) -> None:
        """Serve's proxy trusts X-Forwarded-For from the addresses in FORWARDED_ALLOW_IPS (uvicorn's default
        when Ray passes none: 127.0.0.1 and ::1). Empty wherever the service runs: the image, `make serve`
        (a local Ray started by `serve run` inherits it) and each Ray container of the KubeRay manifest."""
        envs = [text for word, text in instructions(DOCKERFILE.read_text()) if word == "ENV"]
        assert any(re.search(r'(^|\s)FORWARDED_ALLOW_IPS=""(\s|$)', env) for env in envs), envs
        makefile = (ROOT / "Makefile").read_text()
        serve = re.search(r"^serve:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert serve and re.search(r"^\tFORWARDED_ALLOW_IPS= \$\(BIN\)/serve run ", serve[1], re.M)
        service = next(doc for doc in yaml.safe_load_all(KUBERAY.read_text()) if doc["kind"] == "RayService")
        for group in KubeRayManifest.groups(service):
            for container in group["template"]["spec"]["containers"]:
                env_vars = {item["name"]: item for item in container["env"]}
                assert env_vars["FORWARDED_ALLOW_IPS"] == {"name": "FORWARDED_ALLOW_IPS", "value": ""}, container[
                    "name"
                ]
        for name in ("compose.yaml", "compose.gpu.yaml"):  # nothing puts it back
            for service_ in yaml.safe_load((ROOT / name).read_text())["services"].values():
                assert "FORWARDED_ALLOW_IPS" not in service_.get("environment", {}), name

    @pytest.mark.parametrize(("variable", "rewritten"), [(None, True), ("", False)], ids=["unset", "empty"])
    def test_serves_proxy_takes_its_trust_of_forwarded_headers_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, variable: str | None, rewritten: bool
    ) -> None:
        """Ray Serve's proxy builds its uvicorn.Config in ray/serve/_private/http_util.py
        (start_asgi_http_server) with neither proxy_headers nor forwarded_allow_ips: uvicorn then wraps the
        app in ProxyHeadersMiddleware trusting FORWARDED_ALLOW_IPS, 127.0.0.1 when it is unset. Through
        Ray's own code: a loopback caller's X-Forwarded-For rewrites the client address unless the variable
        is empty, which is what the image, `make serve` and the manifest set."""
        import asyncio

        from ray.serve._private import http_util
        from ray.serve.config import HTTPOptions

        configs = []

        class Server:  # uvicorn.Server, keeping the config Ray built instead of serving
            def __init__(self, config: object) -> None:
                configs.append(config)

            async def serve(self, sockets: list) -> None:
                for sock in sockets:
                    sock.close()

        async def seen_client(app_scope: dict) -> tuple:
            async def app(scope: dict, receive: object, send: object) -> None:
                seen.append(scope["client"])

            seen: list = []
            configs[0].load()
            middleware = configs[0].loaded_app
            while (
                getattr(middleware, "app", None) is not None and type(middleware).__name__ != "ProxyHeadersMiddleware"
            ):
                middleware = middleware.app
            assert type(middleware).__name__ == "ProxyHeadersMiddleware"
            middleware.app = app
            await middleware(app_scope, None, None)
            return seen[0]

        async def main() -> tuple:
            task, _ = await http_util.start_asgi_http_server(
                lambda scope, receive, send: None,
                HTTPOptions(host="127.0.0.1", port=0),
                event_loop=asyncio.get_running_loop(),
            )
            await task
            scope = {"type": "http", "client": ("127.0.0.1", 5000), "headers": [(b"x-forwarded-for", b"203.0.113.9")]}
            return await seen_client(scope)

        if variable is None:
            monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
        else:
            monkeypatch.setenv("FORWARDED_ALLOW_IPS", variable)
        monkeypatch.setattr(http_util.uvicorn, "Server", Server)
        client = asyncio.run(main())
        assert configs[0].proxy_headers is True  # Ray leaves uvicorn's default on
        assert client == (("203.0.113.9", 0) if rewritten else ("127.0.0.1", 5000))


COMPOSE_FILES = ("compose.yaml", "compose.gpu.yaml")


def compose_service(*names: str) -> dict:
    """The voxcpm service as compose merges the files (later files override keys; lists of tmpfs and
    security options are the base's unless the override sets them)."""
    merged: dict = {}
    for name in names:
        merged.update(yaml.safe_load((ROOT / name).read_text())["services"]["voxcpm"])
    return merged


class TestComposeHardening:
    """compose.yaml (and compose.gpu.yaml over it): no new privileges, no capabilities, a read-only root
    file system with in-memory file systems where the service writes outside its volumes."""

    @pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["cpu", "gpu"])
    def test_no_privileges_no_capabilities_read_only(self, files: tuple[str, ...]) -> None:
        service = compose_service(*files)
        assert service["security_opt"] == ["no-new-privileges:true"]
        assert service["cap_drop"] == ["ALL"]
        assert "cap_add" not in service and not service.get("privileged")
        assert service["read_only"] is True
        assert service.get("user") in (None, "ray", "1000")
        for name in files:
            raw = yaml.safe_load((ROOT / name).read_text())["services"]["voxcpm"]
            assert not {"cap_add", "privileged", "user", "pid", "network_mode", "ipc"} & set(raw), name

    def test_everything_the_service_writes_is_a_volume_or_a_tmpfs(self) -> None:
        """Outside its volumes (the Dockerfile's VOLUMEs: weights and the Hugging Face cache, voices and
        adapters) the service writes only to /tmp (Ray's session directory, Python's tempfile: spooled
        uploads, decoder scratch files, torch's compiled kernels, which are loaded from there: exec), to
        ~/.ray (Ray's auth_token) and to caches in ~/.cache; compose.gpu.yaml points CUDA's and triton's
        caches there too. Seen with `docker diff` after a run that saved a voice, spoke with an uploaded
        prompt and opened WebSockets (docs/operations.md)."""
        service = compose_service(*COMPOSE_FILES)
        tmpfs = {path: options.split(",") for path, options in (entry.split(":", 1) for entry in service["tmpfs"])}
        assert set(tmpfs) == {"/tmp", "/home/ray/.ray", "/home/ray/.cache"}
        for options in tmpfs.values():
            assert any(re.fullmatch(r"size=\d+[kmg]", option) for option in options), options
        assert "mode=1777" in tmpfs["/tmp"] and "exec" in tmpfs["/tmp"] and "exec" in tmpfs["/home/ray/.cache"]
        uid = re.search(r"useradd [^;]*--uid (\d+)", DOCKERFILE.read_text())[1]
        for home in ("/home/ray/.ray", "/home/ray/.cache"):  # the service user's own, as its home is
            assert f"uid={uid}" in tmpfs[home] and "mode=0700" in tmpfs[home], home
        volumes = json.loads(re.search(r"^VOLUME (.+)$", DOCKERFILE.read_text(), re.M)[1])
        mounted = {entry.split(":")[1] for entry in service["volumes"]}
        assert mounted == set(volumes)
        hf_home = re.search(r"^ENV HF_HOME=(\S+)", DOCKERFILE.read_text(), re.M)[1]
        assert any(hf_home.startswith(volume) for volume in volumes)
        for name in ("container.yaml", "prod.yaml"):
            args = yaml.safe_load((CONFIG_DIR / name).read_text())["applications"][0]["args"]
            for key in ("voices_dir", "adapters_dir", "lexicons_dir", "jobs_dir", "usage_dir"):
                assert any(args[key].startswith(volume) for volume in volumes), (name, key)
        gpu = yaml.safe_load((ROOT / "compose.gpu.yaml").read_text())["services"]["voxcpm"]["environment"]
        for variable in ("CUDA_CACHE_PATH", "TRITON_CACHE_DIR"):
            assert gpu[variable].startswith("/home/ray/.cache/"), variable

    @pytest.mark.skipif(not (shutil.which("docker-compose") or shutil.which("docker")), reason="no Docker Compose")
    @pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["cpu", "gpu"])
    def test_compose_accepts_the_files(self, files: tuple[str, ...]) -> None:
        """Compose's own reading of the files (its schema, then the merge) keeps the hardening."""
        commands = [["docker", "compose"], ["docker-compose"]]
        env = {**os.environ, "VOXCPM_SERVE_API_KEYS": "k1"}
        for command in commands:
            if not shutil.which(command[0]):
                continue
            args = [*command, *(arg for name in files for arg in ("-f", str(ROOT / name))), "config"]
            result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            if result.returncode != 0 and ("is not a docker command" in result.stderr or "unknown" in result.stderr):
                continue  # the CLI without the compose plugin
            assert result.returncode == 0, result.stderr
            service = yaml.safe_load(result.stdout)["services"]["voxcpm"]
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
            assert service["security_opt"] == ["no-new-privileges:true"]
            assert {entry.split(":")[0] for entry in service["tmpfs"]} == {"/tmp", "/home/ray/.ray", "/home/ray/.cache"}
            return
        pytest.skip("no Docker Compose")


SHELLS = [shell for shell in ("sh", "bash") if shutil.which(shell)]  # dash is /bin/sh on Debian


def entrypoint(shell: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """docker/entrypoint.sh with only the given variables (and this Python first on PATH, with the package, as
    the image's), running a command that prints its arguments."""
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]), **env}
    command = [shell, str(ENTRYPOINT), "printf", "%s|", "started", "two words"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell", SHELLS)
class TestEntrypoint:
    """docker/entrypoint.sh, the image's check before `serve run` (``python -m serve_app.ingress.auth``, the rule the
    ingress applies): without keys, only anonymous access asked for starts the service."""

    @pytest.mark.parametrize(
        "env",
        [
            {},
            {"VOXCPM_SERVE_API_KEYS": ""},
            {"VOXCPM_SERVE_API_KEYS": " , ,", "VOXCPM_SERVE_ADMIN_KEYS": " "},  # blank entries are no keys
            {"VOXCPM_SERVE_ALLOW_ANONYMOUS": "false"},
            {"VOXCPM_SERVE_ALLOW_ANONYMOUS": ""},
        ],
        ids=["nothing", "empty", "blank-entries", "anonymous-false", "anonymous-empty"],
    )
    def test_refuses_without_keys(self, shell: str, env: dict[str, str]) -> None:
        result = entrypoint(shell, env)
        assert result.returncode == 78, result  # EX_CONFIG
        assert "started" not in result.stdout
        assert "VOXCPM_SERVE_API_KEYS" in result.stderr and "VOXCPM_SERVE_ALLOW_ANONYMOUS=true" in result.stderr

    @pytest.mark.parametrize(
        "env",
        [
            {"VOXCPM_SERVE_API_KEYS": "k1"},
            {"VOXCPM_SERVE_API_KEYS": "acme=k1, k2"},
            {"VOXCPM_SERVE_ADMIN_KEYS": "admin=k3"},
            {"VOXCPM_SERVE_ALLOW_ANONYMOUS": "true"},
            {"VOXCPM_SERVE_ALLOW_ANONYMOUS": " TRUE "},
            {"VOXCPM_SERVE_ALLOW_ANONYMOUS": "1"},
            {"VOXCPM_SERVE_ALLOW_ANONYMOUS": "yes"},
        ],
        ids=["key", "tenant-keys", "admin-key", "anonymous", "anonymous-caps", "anonymous-1", "anonymous-yes"],
    )
    def test_runs_the_command_with_keys_or_anonymous_asked_for(self, shell: str, env: dict[str, str]) -> None:
        result = entrypoint(shell, env)
        assert result.returncode == 0, result
        assert result.stdout == "started|two words|"  # exec "$@": the arguments verbatim

    def test_keys_or_anonymous_in_the_serve_config_count(self, shell: str, tmp_path: Path) -> None:
        """args.access.api_keys / admin_keys / allow_anonymous in $VOXCPM_SERVE_CONFIG are what the service
        reads too; the image's own configs hold none, so without variables they refuse."""
        config = yaml.safe_load((CONFIG_DIR / "container.yaml").read_text())
        access = config["applications"][0]["args"].setdefault("access", {})
        cases = [({}, 78), ({"api_keys": ["k1"]}, 0), ({"admin_keys": ["a=k2"]}, 0), ({"allow_anonymous": True}, 0)]
        cases += [({"api_keys": [" "]}, 78), ({"allow_anonymous": False}, 78)]
        path = tmp_path / "config.yaml"
        for extra, code in cases:
            access.clear()
            access.update(extra)
            path.write_text(yaml.safe_dump(config))
            result = entrypoint(shell, {"VOXCPM_SERVE_CONFIG": str(path)})
            assert result.returncode == code, (extra, result)
        for name in ("prod.yaml", "container.yaml"):  # what the GPU and the CPU image serve
            result = entrypoint(shell, {"VOXCPM_SERVE_CONFIG": str(CONFIG_DIR / name)})
            assert result.returncode == 78, (name, result)
        missing = entrypoint(shell, {"VOXCPM_SERVE_CONFIG": str(tmp_path / "absent.yaml")})
        assert missing.returncode == 78


class KubeRayManifest:
    """The manifest's documents, parsed once per test class, and ways into them."""

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


class TestKubeRay(KubeRayManifest):
    """configs/kuberay-rayservice.yaml embeds configs/prod.yaml and holds to what KubeRay's controller does
    with it (ray-project/kuberay, ray-operator/controllers/ray/: rayservice_controller.go, common/pod.go,
    common/service.go; samples in ray-operator/config/samples/ray-service.*.yaml)."""

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
                if "persistentVolumeClaim" not in volume:
                    continue  # the autoscaler's projected token
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

    def test_every_pod_mounts_the_voices_and_adapters_the_replicas_share(self, service: dict) -> None:
        args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
        groups = [service["spec"]["rayClusterConfig"]["headGroupSpec"]]
        groups += service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        for group in groups:
            container = group["template"]["spec"]["containers"][0]
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            # the adapters in a directory of the voices' claim, which the voice store ignores
            assert args["voices_dir"] in mounts and Path(args["adapters_dir"]).parent.as_posix() in mounts


class TestKubeRaySecurity(KubeRayManifest):
    """Who may command the cluster: Ray's token, a NetworkPolicy, unprivileged containers, required keys.
    KubeRay 1.5.1 (ray-project/kuberay, tag v1.5.1): apis/ray/v1/raycluster_types.go (AuthOptions),
    controllers/ray/raycluster_controller.go (reconcileAuthSecret), common/pod.go (configureTokenAuth,
    BuildAutoscalerContainer, mergeAutoscalerOverrides, labelPod, the wait-gcs-ready init container),
    common/service.go (BuildServiceForHeadPod), utils/util.go (FetchHeadServiceURL,
    GetRayDashboardClientFunc), utils/validation.go; Ray 2.60 (ray/dashboard/http_server_head.py)."""

    @pytest.fixture(scope="class")
    def policy(self, documents: list[dict]) -> dict:
        """The ingress policy."""
        (policy,) = [
            doc for doc in documents if doc["kind"] == "NetworkPolicy" and "Ingress" in doc["spec"]["policyTypes"]
        ]
        return policy

    @pytest.fixture(scope="class")
    def egress(self, documents: list[dict]) -> dict:
        (policy,) = [
            doc for doc in documents if doc["kind"] == "NetworkPolicy" and "Egress" in doc["spec"]["policyTypes"]
        ]
        return policy

    @staticmethod
    def cluster(service: dict) -> dict:
        return service["spec"]["rayClusterConfig"]

    @classmethod
    def containers(cls, service: dict) -> list[dict]:
        """Every container the pods run: ours, plus the autoscaler sidecar KubeRay builds from
        autoscalerOptions (BuildAutoscalerContainer + mergeAutoscalerOverrides: it takes nothing from
        the pod template). The workers' wait-gcs-ready init container copies the Ray container's
        securityContext and has fixed requests and limits (DefaultWorkerPodTemplate)."""
        ours = [c for g in cls.groups(service) for c in g["template"]["spec"]["containers"]]
        autoscaler = {"name": "autoscaler", **cls.cluster(service)["autoscalerOptions"]}
        assert cls.cluster(service)["enableInTreeAutoscaling"] is True  # so the sidecar exists
        return [*ours, autoscaler]

    @staticmethod
    def port(container: dict, name: str) -> int:
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
        return port

    def test_ray_token_authentication_is_on(self, service: dict) -> None:
        """authOptions.mode: token makes KubeRay create a Secret per RayCluster (key auth_token) and set
        RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from it in the Ray, autoscaler and wait-gcs-ready
        containers; the operator's dashboard client sends it (GetRayDashboardClientFunc). Ray 2.60's
        dashboard then answers 401 without the token, except its health checks. KubeRay refuses token mode
        below Ray 2.52 (ValidateRayClusterSpec); authOptions first appeared in KubeRay 1.5.1's CRD, which
        the header must ask for (an older CRD would prune the field and run Ray without authentication)."""
        cluster = self.cluster(service)
        assert cluster["authOptions"] == {"mode": "token"}
        assert tuple(int(part) for part in cluster["rayVersion"].split(".")) >= (2, 52, 0)
        claimed = re.search(r"KubeRay operator >= (\d+)\.(\d+)\.(\d+)", KUBERAY.read_text())
        assert claimed and tuple(int(part) for part in claimed.groups()) >= (1, 5, 1)

    def test_every_container_is_unprivileged(self, service: dict) -> None:
        """Pod Security Standards' "restricted" profile, per container: non-root with the image's numeric
        uid (the Dockerfile's `ray`, 1000: a name cannot be checked by the kubelet), no privilege
        escalation (no_new_privs: Ray's image gives `ray` passwordless sudo), every capability dropped,
        the runtime's default seccomp profile. The autoscaler sidecar gets its own only from
        autoscalerOptions.securityContext (mergeAutoscalerOverrides)."""
        uid = re.search(r"useradd [^;]*--uid (\d+)", DOCKERFILE.read_text())
        assert re.search(r"^USER ray$", DOCKERFILE.read_text(), re.M) and uid
        for container in self.containers(service):
            context = container.get("securityContext", {})
            assert context.get("runAsNonRoot") is True, container["name"]
            assert context.get("runAsUser") == int(uid[1]), container["name"]
            assert context.get("allowPrivilegeEscalation") is False, container["name"]
            assert context.get("privileged") in (None, False), container["name"]
            assert context.get("capabilities") == {"drop": ["ALL"]}, container["name"]
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, container["name"]
        for group in self.groups(service):
            pod = group["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["fsGroup"] == int(uid[1])  # writes the claims' roots
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")

    def test_workers_carry_no_kubernetes_credentials(self, service: dict) -> None:
        """Only the head's autoscaler calls the Kubernetes API (KubeRay binds it a service account); code
        running on a GPU worker gets no token to call it with."""
        for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            assert group["template"]["spec"]["automountServiceAccountToken"] is False

    def test_only_the_autoscaler_holds_the_service_account_token(self, service: dict) -> None:
        """No pod mounts the token by itself (automountServiceAccountToken: false), so the Ray container,
        which parses untrusted uploads, has none. The autoscaler sidecar, which KubeRay builds from
        autoscalerOptions alone (mergeAutoscalerOverrides appends its volumeMounts), mounts a projected
        volume of the head pod with what the kubelet would have mounted (the kube-api-access volume: a
        rotated token, the cluster CA from the kube-root-ca.crt ConfigMap, the namespace) at the path Ray's
        autoscaler reads the token and CA from."""
        from ray.autoscaler._private.kuberay import node_provider

        path = "/var/run/secrets/kubernetes.io/serviceaccount"
        assert node_provider.IN_CLUSTER_TOKEN_PATH == f"{path}/token"
        assert node_provider.IN_CLUSTER_CA_CERT_PATH == f"{path}/ca.crt"
        for group in self.groups(service):
            spec = group["template"]["spec"]
            assert spec["automountServiceAccountToken"] is False
            for container in [*spec["containers"], *spec.get("initContainers", [])]:
                for mount in container.get("volumeMounts", []):
                    assert not mount["mountPath"].startswith("/var/run/secrets"), container["name"]
                    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                    assert "projected" not in volume and "secret" not in volume, container["name"]
        options = self.cluster(service)["autoscalerOptions"]
        assert set(options) <= AUTOSCALER_OPTIONS, set(options) - AUTOSCALER_OPTIONS
        (mount,) = options["volumeMounts"]
        assert mount["mountPath"] == path and mount["readOnly"] is True
        head = self.cluster(service)["headGroupSpec"]["template"]["spec"]
        (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
        sources = {next(iter(source)): source[next(iter(source))] for source in volume["projected"]["sources"]}
        assert sources["serviceAccountToken"]["path"] == "token"
        assert 600 <= sources["serviceAccountToken"].get("expirationSeconds", 3600) <= 3607  # rotated by the kubelet
        assert sources["configMap"] == {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        (namespace,) = sources["downwardAPI"]["items"]
        assert namespace == {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}
        assert "serviceAccountName" not in head  # KubeRay names the one it binds the autoscaler's Role to

    @pytest.mark.parametrize(
        ("env", "access", "code"),
        [
            ({}, {}, 78),
            ({"VOXCPM_SERVE_API_KEYS": ""}, {}, 78),  # the secret's value empty
            ({"VOXCPM_SERVE_API_KEYS": " , "}, {}, 78),
            ({}, {"api_keys": []}, 78),
            ({"VOXCPM_SERVE_API_KEYS": "", "VOXCPM_SERVE_ADMIN_KEYS": ""}, {"api_keys": [], "admin_keys": []}, 78),
            ({"VOXCPM_SERVE_API_KEYS": "k1"}, {}, 0),
            ({}, {"api_keys": ["k1"]}, 0),
        ],
        ids=["nothing", "empty-secret", "blank-secret", "empty-list", "all-empty", "key", "config-key"],
    )
    @pytest.mark.skipif(not shutil.which("bash"), reason="KubeRay runs the Ray container's command with bash")
    def test_ray_starts_only_with_keys(
        self, service: dict, tmp_path: Path, env: dict[str, str], access: dict, code: int
    ) -> None:
        """KubeRay replaces the image's entrypoint (and its key check) with its own command, built by BuildPod
        (common/pod.go): the container's command and args, each as " %s ", then " && ulimit -n 65536; ray
        start ...", run by /bin/bash -c. The manifest's command is the image's check, ending the shell
        (exit 78, EX_CONFIG) when it refuses: without `|| exit 78` the `;` would start Ray anyway. An empty
        key list (the secret's value empty, or api_keys: [] in the Serve config) is refused like a missing
        one. Run here as KubeRay builds it, with `ray start` replaced by a marker."""
        config = yaml.safe_load(service["spec"]["serveConfigV2"])
        config["applications"][0]["args"]["access"] = access
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
        for group in self.groups(service):
            (container,) = group["template"]["spec"]["containers"]
            assert "ray.io/overwrite-container-cmd" not in group["template"].get("metadata", {}).get("annotations", {})
            cmd = "".join(f" {part} " for part in [*container["command"], *container.get("args", [])])
            assert "ray start" not in cmd  # else KubeRay would run it as it is, without its own ray start
            script = f"{cmd} && ulimit -n 65536 2>/dev/null; printf ray-started"
            variables = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
            variables |= {"VOXCPM_SERVE_CONFIG": str(tmp_path / "serve.yaml"), **env}
            result = subprocess.run(
                ["bash", "-c", "--", script], env=variables, cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == code, (container["name"], result)
            assert ("ray-started" in result.stdout) == (code == 0), container["name"]
            if code:
                assert "VOXCPM_SERVE_API_KEYS" in result.stderr, container["name"]

    def test_every_container_has_requests_and_limits(self, service: dict) -> None:
        """Without limits a job on a Ray node can starve its neighbours; KubeRay also derives Ray's CPU and
        memory from the Ray container's (common/pod.go generateRayStartCommand)."""
        for container in self.containers(service):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory", "ephemeral-storage"} <= set(resources[kind]), (container["name"], kind)

    def test_every_container_has_ephemeral_storage_for_spooling_and_logs(self, service: dict) -> None:
        """Uploads are spooled to /tmp while a form is parsed and Ray's logs grow under /tmp/ray: without an
        ephemeral-storage request the scheduler reserves no disk for them and a full node evicts whatever it
        picks (the head included); the limit evicts only the pod that runs past it. The Ray containers hold
        several of the largest uploads at once (an adapter's file, a reference recording) beside the logs;
        the autoscaler (autoscalerOptions.resources: KubeRay takes nothing from the pod template for it)
        writes logs only. KubeRay's own wait-gcs-ready init container has fixed resources (cpu, memory)."""
        limits = AppConfig.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"])
        largest_upload = max(limits.limits.max_adapter_bytes, limits.limits.max_request_bytes)
        for container in self.containers(service):
            request = quantity(container["resources"]["requests"]["ephemeral-storage"])
            limit = quantity(container["resources"]["limits"]["ephemeral-storage"])
            assert 0 < request <= limit, container["name"]
            if container["name"] != "autoscaler":
                assert request >= 16 * largest_upload and limit >= 4 * request, container["name"]

    def test_the_api_key_secret_is_required(self, service: dict) -> None:
        """A missing secret keeps the pod from starting (CreateContainerConfigError) instead of starting a
        service without keys; `optional: true` would run it keyless. Keys come only from secrets, never a
        literal in the manifest. The admin keys may be absent: the API keys alone close the service."""
        for group in self.groups(service):
            for container in group["template"]["spec"]["containers"]:
                env = {item["name"]: item for item in container.get("env", [])}
                api = env["VOXCPM_SERVE_API_KEYS"]
                assert "value" not in api and api["valueFrom"]["secretKeyRef"].get("optional", False) is False
                for name in ("VOXCPM_SERVE_API_KEYS", "VOXCPM_SERVE_ADMIN_KEYS"):
                    assert "value" not in env.get(name, {}), name
                    assert name not in env or "secretKeyRef" in env[name]["valueFrom"], name
                assert "VOXCPM_SERVE_ALLOW_ANONYMOUS" not in env, container["name"]

    def test_nothing_publishes_the_dashboard(self, documents: list[dict], service: dict) -> None:
        """The head Service is headless ClusterIP unless headGroupSpec.serviceType says otherwise, and it
        carries every port of the head container, the dashboard's included (BuildServiceForHeadPod);
        enableIngress makes KubeRay create an Ingress to the dashboard (reconcileIngress). None of these,
        no headService or serveService of ours, and no other object exposing anything: operators reach
        the dashboard with kubectl port-forward."""
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress")
        assert "headService" not in head and "serveService" not in service["spec"]
        kinds = {doc["kind"] for doc in documents}
        assert kinds <= {"RayService", "PersistentVolumeClaim", "NetworkPolicy"}, kinds

    def test_the_policies_select_every_ray_pod_of_the_service(self, service: dict, policy: dict, egress: dict) -> None:
        """A pod no policy selects accepts everything. The selector must match the head and every worker
        group of every cluster generation (an upgrade creates a RayCluster with a new name, so
        ray.io/cluster cannot be used): KubeRay keeps the template's labels on the pods, except the
        ray.io/node-type, group and cluster it sets itself, and adds ray.io/is-ray-node: yes (labelPod).
        Ingress only: the pods need the hub, DNS and the Kubernetes API outbound."""
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        kuberay_owned = {"ray.io/node-type", "ray.io/group", "ray.io/cluster", "ray.io/identifier"}
        for group in self.groups(service):
            labels = group["template"].get("metadata", {}).get("labels", {})
            assert not kuberay_owned & set(labels)
        for name, selector in (("ingress", policy["spec"]["podSelector"]), ("egress", egress["spec"]["podSelector"])):
            assert set(selector) == {"matchLabels"}, name
            for group in self.groups(service):
                labels = group["template"].get("metadata", {}).get("labels", {})
                assert selector["matchLabels"].items() <= {**labels, **RAY_POD_LABEL}.items(), name

    @staticmethod
    def egress_allows(policy: dict, address: str, pod_labels: dict | None = None) -> bool:
        """NetworkPolicy egress semantics for a destination address (a pod's when pod_labels is given): some
        rule's peers (missing: all) allow it; ipBlock matches its cidr minus its except ranges."""

        def peer_matches(peer: dict) -> bool:
            if "ipBlock" in peer:
                ip = ipaddress.ip_address(address)
                block = peer["ipBlock"]
                network = ipaddress.ip_network(block["cidr"])
                if ip.version != network.version or ip not in network:
                    return False
                return not any(ip in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
            if pod_labels is None:
                return False
            assert set(peer) == {"namespaceSelector"} and peer["namespaceSelector"] == {}, peer
            return True  # every pod of every namespace

        for rule in policy["spec"].get("egress", []):
            assert "ports" not in rule, rule  # every port
            if not rule.get("to") or any(peer_matches(peer) for peer in rule["to"]):
                return True
        return False

    def test_egress_reaches_everything_but_the_metadata_service(self, egress: dict) -> None:
        """The cloud's instance metadata service hands out the node's credentials: no Ray pod reaches it, at
        169.254.169.254 (AWS, GCP, Azure, OCI) or AWS's IPv6 fd00:ec2::254. Everything else stays reachable:
        the Hugging Face hub, DNS (kube-dns pods, or NodeLocal DNSCache at 169.254.20.10), the Kubernetes
        API the autoscaler calls (its Service address and the control plane's), the other Ray pods (also
        as pods, for plugins whose ipBlock leaves pod addresses out)."""
        assert egress["spec"]["policyTypes"] == ["Egress"]
        blocked = ["169.254.169.254", "fd00:ec2::254"]
        reachable = ["8.8.8.8", "18.244.28.10", "10.96.0.1", "10.0.0.10", "172.20.0.1", "192.168.1.5"]
        reachable += ["169.254.20.10", "169.254.169.253", "100.64.0.1", "2600:1f18::1", "fd00:ec2::253", "::1"]
        for address in blocked:
            assert not self.egress_allows(egress, address), address
        for address in reachable:
            assert self.egress_allows(egress, address), address
        assert self.egress_allows(egress, "10.244.1.7", pod_labels={"k8s-app": "kube-dns"})
        for rule in egress["spec"]["egress"]:  # exactly the metadata addresses are left out
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert peer["ipBlock"]["cidr"] in ("0.0.0.0/0", "::/0")
                    assert set(peer["ipBlock"]["except"]) <= {
                        f"{address}/{32 if '.' in address else 128}" for address in blocked
                    }

    @staticmethod
    def allows(policy: dict, port: int, pod_labels: dict, namespace: str | None) -> bool:
        """NetworkPolicy ingress semantics (Kubernetes networking/v1 types.go): a connection is allowed
        when some rule's peers (empty or missing: all sources) and ports (empty or missing: all ports) both
        match. namespace None is the policy's own; a peer with only a podSelector means that namespace."""

        def selects(selector: dict, labels: dict) -> bool:
            assert set(selector) <= {"matchLabels"}, selector  # matchExpressions are not evaluated here
            return selector.get("matchLabels", {}).items() <= labels.items()

        def peer_matches(peer: dict) -> bool:
            assert "ipBlock" not in peer, peer  # address ranges would open the ports to anything there
            if "namespaceSelector" in peer:
                ns_labels = {"kubernetes.io/metadata.name": namespace or "the-services-namespace"}
                in_namespace = selects(peer["namespaceSelector"], ns_labels)
            else:
                in_namespace = namespace is None
            return in_namespace and selects(peer.get("podSelector", {}), pod_labels)

        for rule in policy["spec"].get("ingress", []):
            peers_ok = not rule.get("from") or any(peer_matches(peer) for peer in rule["from"])
            ports = rule.get("ports")
            ports_ok = not ports or any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports)
            if peers_ok and ports_ok:
                return True
        return False

    def test_who_reaches_which_port(self, service: dict, policy: dict, prod: dict) -> None:
        """The Serve port from anywhere; the dashboard (and Jobs API) only from the KubeRay operator's pods,
        whose RayService controller calls the head Service's port named `dashboard` (FetchHeadServiceURL
        with DashboardPortName) and the head pod's Serve port (updateHeadPodServeLabel); the metrics port
        only from the monitoring namespace; GCS, the client port, the dashboard agent and every other Ray
        port only between the Ray pods. Namespaces are matched by kubernetes.io/metadata.name, the label
        the API server sets on every namespace."""
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
        container = self.head(service)
        serve, dashboard = self.port(container, "serve"), self.port(container, "dashboard")
        metrics = int(head["rayStartParams"]["metrics-export-port"])
        assert serve == prod["http_options"]["port"] and metrics == self.port(container, "metrics")
        gcs, client, agent, worker = self.port(container, "gcs"), 10001, 52365, 10002  # Ray's defaults
        rules = policy["spec"]["ingress"]
        (operator_peer,) = [r["from"][0] for r in rules if r.get("ports") == [{"protocol": "TCP", "port": dashboard}]]
        (monitoring_peer,) = [r["from"][0] for r in rules if r.get("ports") == [{"protocol": "TCP", "port": metrics}]]
        operator_ns = operator_peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        monitoring_ns = monitoring_peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        ray_pod = policy["spec"]["podSelector"]["matchLabels"]
        # The operator pod's labels: helm-chart/kuberay-operator (templates/deployment.yaml, _helpers.tpl)
        # and the kustomize install (ray-operator/config/manager/manager.yaml).
        helm = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}
        kustomize = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": "kuberay-operator"}
        sources = {  # name: (pod labels, namespace, ports it may reach)
            "anyone": ({"app": "curl"}, "elsewhere", {serve}),
            "a pod beside the service": ({"app": "curl"}, None, {serve}),
            "the KubeRay operator (helm)": (helm, operator_ns, {serve, dashboard}),
            "the KubeRay operator (kustomize)": (kustomize, operator_ns, {serve, dashboard}),
            "an operator-labelled pod elsewhere": (helm, "elsewhere", {serve}),
            "another pod in the operator's namespace": ({"app": "job"}, operator_ns, {serve}),
            "Prometheus": ({"app.kubernetes.io/name": "prometheus"}, monitoring_ns, {serve, metrics}),
            "a Ray pod": (ray_pod, None, {serve, dashboard, metrics, gcs, client, agent, worker}),
            "a Ray pod of another service": ({**RAY_POD_LABEL, "ray.io/cluster": "other"}, None, {serve}),
        }
        for name, (labels, namespace, reachable) in sources.items():
            for port in (serve, dashboard, metrics, gcs, client, agent, worker):
                assert self.allows(policy, port, labels, namespace) == (port in reachable), (name, port)


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
