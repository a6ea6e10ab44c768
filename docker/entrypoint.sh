#!/bin/sh
# The image's entrypoint, under tini: it refuses to start a service that anyone who can reach the
# container's port could use without a key, then runs the command (CMD: serve run "$VOXCPM_SERVE_CONFIG").
# The rule is the service's own (serve_app/ingress/auth.py: keys in VOXCPM_SERVE_API_KEYS / VOXCPM_SERVE_ADMIN_KEYS
# or in the Serve config, or VOXCPM_SERVE_ALLOW_ANONYMOUS=true); without them it exits 78 (EX_CONFIG) saying
# how to set keys. Any failure of the check refuses too.
#
# Docker and compose: KubeRay gives the Ray container its own command (/bin/bash -c "... ray start"),
# which replaces this entrypoint; configs/kuberay-rayservice.yaml runs the same check first there.
set -eu
python -m serve_app.ingress.auth "${VOXCPM_SERVE_CONFIG:-}"
exec "$@"
