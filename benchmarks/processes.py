"""The benchmark's view of the machine's processes: which are Serve's, the CPU time each used, and pinning
the model replicas to a core of their own (a 2-core machine shares its cores between generation and HTTP)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def model_on_its_own_core(core: int = 0) -> Iterator[None]:
    """Every thread of the model replicas on ``core``, every other process of the machine (proxy,
    ingress, Ray, this script's clients) on the other cores; all cores again afterwards.

    On a GPU node generation does not share cores with HTTP handling; on a 2-core machine it does,
    and then any load slows it, whatever the design. This separates the two, so a benchmark can
    tell what load costs the model process itself.
    """
    models = {pid for pid, title in process_titles() if title.startswith("ray::ServeReplica:") and "Model" in title}
    assert models, "no model replica process found"
    everything = set(range(os.cpu_count() or 1))
    _set_affinity(lambda pid: {core} if pid in models else everything - {core})
    try:
        yield
    finally:
        _set_affinity(lambda _: everything)


def process_titles() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every process; Ray titles an actor's process ``ray::<actor class>``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the Serve processes (model replicas, ingress, proxy, HAProxy when Serve
    runs it), summed by deployment, and by this process (the benchmark's clients)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {"clients": sum(os.times()[:2])}
    for pid, title in process_titles():
        command = title.split(maxsplit=1)[0] if title.strip() else ""
        if command.startswith(("ray::ServeReplica:", "ray::ProxyActor")) or Path(command).name == "haproxy":
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                # Ray adds the method an actor is running to its process title: ray::ProxyActor.receive_asgi_messages
                name = Path(command).name.rsplit(":", 1)[-1].split(".")[0]
                used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return used


def cpu_seconds_since(before: dict[str, float]) -> dict[str, float]:
    """CPU seconds each of those processes used since ``before`` (an earlier :func:`cpu_seconds`)."""
    return {name: used - before.get(name, 0.0) for name, used in cpu_seconds().items()}


def _set_affinity(cores_of: Callable[[int], set[int]]) -> None:
    for pid, _ in process_titles():
        with contextlib.suppress(OSError):  # gone meanwhile, or a kernel thread bound to its core
            for thread in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(thread.name), cores_of(pid))
