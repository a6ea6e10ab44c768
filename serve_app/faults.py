"""Fault injection, for the tests' own apps only: how they show that Serve replaces a replica whose health check
fails (tests/service/test_health.py).

A deployment's ``inject_fault`` method works only where the replica's environment sets ``FAULTS_ENV`` to "1"
(only the tests' apps do), and is out of clients' reach anyway: Serve routes HTTP to the ingress's routes alone,
and no route calls it. A method rather than a config setting, so that no config can ship a fault.
"""

from __future__ import annotations

import os

from serve_app.errors import Forbidden

FAULTS_ENV = "VOXCPM_SERVE_TEST_FAULTS"


def allowed() -> None:
    """Raises ``Forbidden`` unless this replica's environment switches fault injection on."""
    if os.environ.get(FAULTS_ENV) != "1":
        raise Forbidden("fault injection is off here")
