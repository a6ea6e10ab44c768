"""The configs derived from others, so that each thing is said once (``make configs``; ``--check``: exit 1,
naming the files, when one is not what its source gives).

- ``container.yaml`` is ``local.yaml`` where a container must differ: it listens on every interface (a
  published port reaches the container's eth0, not its loopback) and keeps the checkpoint and the saved
  voices on the image's volumes.
- ``kuberay-rayservice.yaml`` embeds ``prod.yaml`` as its ``serveConfigV2``; the rest of the manifest (the
  cluster, its security) is written there by hand.

Text, not YAML, is rewritten, so every comment stays where it was.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent
GENERATED = "# Generated from configs/{source} by `make configs`: edit that file, then run it.\n"
CONTAINER_HEADER = """\
# configs/local.yaml in a container (the CPU image's default, `make image-cpu`): it listens on every
# interface of the container (publish the port with `docker run -p`) and keeps the checkpoint and saved
# voices on the image's volumes. With no weights mounted it writes the synthetic checkpoint there and
# speaks noise (it says so); mount real weights and point `source` at them.
"""
# (a key's line in local.yaml, what it becomes in a container)
CONTAINER_LINES = [
    (r"^  host: .*$", "  host: 0.0.0.0"),
    (
        r"^        source: .*$",
        "        source: /models/tiny-voxcpm1.5  # the image's model volume: mount real weights and point here",
    ),
    (
        r"^      model:$",
        "      voices_dir: /var/lib/voxcpm-serve/voices\n"
        "      adapters_dir: /var/lib/voxcpm-serve/voices/.adapters\n"
        "      lexicons_dir: /var/lib/voxcpm-serve/voices/.lexicons\n"
        "      jobs_dir: /var/lib/voxcpm-serve/voices/.jobs\n"
        "      usage_dir: /var/lib/voxcpm-serve/voices/.usage\n      model:",
    ),
]
EMBEDDED = re.compile(r"^(  serveConfigV2: \|\n)((?:    .*\n|\n)*)", re.MULTILINE)


def container() -> str:
    local = (CONFIGS / "local.yaml").read_text()
    body = local[re.search(r"^[^#\n]", local, re.MULTILINE).start() :]  # type: ignore[union-attr]
    for pattern, line in CONTAINER_LINES:
        body, count = re.subn(pattern, line, body, count=1, flags=re.MULTILINE)
        if count != 1:
            raise ValueError(f"configs/local.yaml has no line {pattern!r} to change for the container")
    return GENERATED.format(source="local.yaml") + CONTAINER_HEADER + body


def kuberay() -> str:
    manifest = (CONFIGS / "kuberay-rayservice.yaml").read_text()
    prod = (CONFIGS / "prod.yaml").read_text()
    indented = "".join(f"    {line}" if line.strip() else "\n" for line in prod.splitlines(keepends=True))
    embedded, count = EMBEDDED.subn(lambda match: match.group(1) + indented, manifest, count=1)
    if count != 1:
        raise ValueError("configs/kuberay-rayservice.yaml has no `serveConfigV2: |` block")
    return embedded


def main(argv: list[str]) -> int:
    stale = []
    for name, text in (("container.yaml", container()), ("kuberay-rayservice.yaml", kuberay())):
        path = CONFIGS / name
        if path.read_text() != text:
            stale.append(name)
            if "--check" not in argv:
                path.write_text(text)
    if stale and "--check" in argv:
        print(f"not generated from their sources: {', '.join(stale)} (run `make configs`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
