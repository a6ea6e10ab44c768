"""configs/*.yaml parse with Ray's own schema and our AppConfig, and keep their promises."""

from __future__ import annotations

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
    assert Path(args["adapters_dir"]).parent.as_posix() == args["voices_dir"]  # on the voices' volume
    assert Path(args["model"]["source"]).parent.as_posix() in json.loads(volumes[1])
    local["http_options"]["host"] = "0.0.0.0"
    local_args = local["applications"][0]["args"]
    local_args["voices_dir"], local_args["model"]["source"] = args["voices_dir"], args["model"]["source"]
    local_args["adapters_dir"] = args["adapters_dir"]
    assert container == local


def test_derived_configs_are_generated_from_their_sources() -> None:
    """container.yaml from local.yaml, the KubeRay manifest's serveConfigV2 from prod.yaml (`make configs`)."""
    result = subprocess.run(
        [sys.executable, str(CONFIG_DIR / "generate.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


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
        (policy,) = [doc for doc in documents if doc["kind"] == "NetworkPolicy"]
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

    def test_every_container_has_requests_and_limits(self, service: dict) -> None:
        """Without limits a job on a Ray node can starve its neighbours; KubeRay also derives Ray's CPU and
        memory from the Ray container's (common/pod.go generateRayStartCommand)."""
        for container in self.containers(service):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)

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

    def test_the_policy_selects_every_ray_pod_of_the_service(self, service: dict, policy: dict) -> None:
        """A pod no policy selects accepts everything. The selector must match the head and every worker
        group of every cluster generation (an upgrade creates a RayCluster with a new name, so
        ray.io/cluster cannot be used): KubeRay keeps the template's labels on the pods, except the
        ray.io/node-type, group and cluster it sets itself, and adds ray.io/is-ray-node: yes (labelPod).
        Ingress only: the pods need the hub, DNS and the Kubernetes API outbound."""
        selector = policy["spec"]["podSelector"]
        assert set(selector) == {"matchLabels"}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        kuberay_owned = {"ray.io/node-type", "ray.io/group", "ray.io/cluster", "ray.io/identifier"}
        for group in self.groups(service):
            labels = group["template"].get("metadata", {}).get("labels", {})
            assert not kuberay_owned & set(labels)
            assert selector["matchLabels"].items() <= {**labels, **RAY_POD_LABEL}.items()

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
