# VoxCPM Serve as a container image.
#   GPU, the default (KubeRay runs it too): Ray's own image of the same Ray and Python release.
#     make image                       -> voxcpm-serve:0.1.0-gpu, serves configs/prod.yaml
#   CPU (a laptop, CI): any Debian/Ubuntu base (Python is added when it has none).
#     make image-cpu                   -> voxcpm-serve:0.1.0-cpu, serves configs/container.yaml
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as the BuildKit secret `pip_cert`
# (`docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt`); PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL and PIP_FIND_LINKS build args point pip at a mirror or a local wheel server.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

ARG CONFIG=configs/prod.yaml
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS

USER root
# tini reaps Ray's orphaned worker processes and passes the stop signal on to `serve run`.
# One Python holds Ray and this package, so `ray start` (what KubeRay runs), `serve run` and Ray's
# workers all import the service: on Ray's image that is its own Python (conda, with Ray), which
# /opt/venv then names; on a plain base, a new venv.
RUN set -eux; \
    pkgs="ffmpeg curl ca-certificates tini"; \
    command -v python3 >/dev/null || pkgs="$pkgs python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    id -u ray >/dev/null 2>&1 || useradd --create-home --uid 1000 --shell /bin/bash ray; \
    if python3 -c "import ray" 2>/dev/null; then \
        ln -s "$(python3 -c 'import sys; print(sys.prefix)')" /opt/venv; \
    else \
        python3 -m venv /opt/venv; \
    fi; \
    mkdir -p /app /models /var/lib/voxcpm-serve/voices; \
    chown ray /models /var/lib/voxcpm-serve /var/lib/voxcpm-serve/voices
# No way back to root for the service user: Ray's image installs sudo and gives `ray` passwordless sudo
# (/etc/sudoers, the sudo group); both go, with sudo itself (SUDO_FORCE_REMOVE: its removal script refuses
# while root has no password, as in every image), and no file keeps a setuid or setgid bit
# (su, passwd, mount, ...), so code that takes over a worker stays uid 1000 even where a runtime allows
# privilege escalation (compose and KubeRay forbid it too: no-new-privileges, allowPrivilegeEscalation).
RUN set -eux; \
    if dpkg -s sudo >/dev/null 2>&1; then \
        DEBIAN_FRONTEND=noninteractive SUDO_FORCE_REMOVE=yes apt-get purge -y sudo; \
    fi; \
    rm -rf /etc/sudoers /etc/sudoers.d; \
    if getent group sudo >/dev/null; then gpasswd -d ray sudo 2>/dev/null || true; fi; \
    if getent group admin >/dev/null; then gpasswd -d ray admin 2>/dev/null || true; fi; \
    find / -xdev -type f -perm /6000 -exec chmod a-s {} +; \
    if command -v sudo; then exit 1; fi; \
    test -z "$(find / -xdev -type f -perm /6000)"
ENV PATH=/opt/venv/bin:$PATH

# The dependencies in their own layer, so a change of code does not reinstall torch.
COPY pyproject.toml /app/
RUN --mount=type=secret,id=pip_cert --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    python -c 'import tomllib; print("\n".join(tomllib.load(open("/app/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt; \
    pip install --disable-pip-version-check --upgrade pip; \
    pip install --disable-pip-version-check -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

COPY README.md /app/
COPY --chmod=755 docker/entrypoint.sh /usr/local/bin/voxcpm-serve-entrypoint
COPY serve_app /app/serve_app
COPY configs /app/configs
RUN --mount=type=secret,id=pip_cert \
    set -eu; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    pip install --disable-pip-version-check --no-deps --no-cache-dir /app; \
    rm -rf /app/build /app/*.egg-info

# Weights (the Hugging Face cache, or a synthetic checkpoint) and saved voices outlive the container.
# No key is ever set here (ENV or ARG would live in the image's history): keys come at run time, from
# VOXCPM_SERVE_API_KEYS / VOXCPM_SERVE_ADMIN_KEYS, or from a Kubernetes secret.
# FORWARDED_ALLOW_IPS is empty: Serve's proxy runs uvicorn with its default proxy_headers=True and no
# forwarded_allow_ips, so uvicorn trusts X-Forwarded-For/-Proto from the addresses this variable lists
# (127.0.0.1 and ::1 when it is unset), and would let a local caller claim any client address. Empty, no
# caller is trusted: the client address (rate limits, failed-key counting, loopback-only anonymous access)
# is always the connection's own. Ray's processes inherit it from `serve run` / `ray start`.
ENV HF_HOME=/models/huggingface \
    VOXCPM_SERVE_CONFIG=/app/${CONFIG} \
    RAY_USAGE_STATS_ENABLED=0 \
    FORWARDED_ALLOW_IPS="" \
    PYTHONUNBUFFERED=1
VOLUME ["/models", "/var/lib/voxcpm-serve/voices"]
WORKDIR /app
USER ray
EXPOSE 7861
# Ready once every model has a warmed replica (GET /ready); the first start may compile for minutes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:7861/ready || exit 1
# `serve run` shuts Serve down cleanly on SIGINT (KeyboardInterrupt) and exits 0; on SIGTERM it would
# die at once. Give `docker stop` a grace period that covers the deployments' graceful shutdown.
STOPSIGNAL SIGINT
# docker/entrypoint.sh refuses to start without API keys unless anonymous access is asked for
# (VOXCPM_SERVE_ALLOW_ANONYMOUS=true), then execs the command. KubeRay replaces the entrypoint with its
# own `ray start` command; the manifest puts the same check (`python -m serve_app.ingress.auth`) before it.
ENTRYPOINT ["tini", "--", "/usr/local/bin/voxcpm-serve-entrypoint"]
CMD ["sh", "-c", "exec serve run \"$VOXCPM_SERVE_CONFIG\""]
