"""GPU status through NVML (nvidia-ml-py), read on the node that owns the GPUs.

NVML sees every GPU of the node whatever CUDA_VISIBLE_DEVICES says, and works without CUDA
initialised. On a machine without an NVIDIA driver it answers with an empty list.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def devices() -> list[dict[str, Any]]:
    """One dict per GPU: name, memory (bytes), utilization (%), temperature (C), power (W)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver: a CPU node
        logger.debug("NVML unavailable: %s", exc)
        return []
    try:
        return [_device(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _device(pynvml: Any, index: int) -> dict[str, Any]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
    return {
        "index": index,
        "name": pynvml.nvmlDeviceGetName(handle),
        "uuid": pynvml.nvmlDeviceGetUUID(handle),
        "memory_total_bytes": memory.total,
        "memory_used_bytes": memory.used,
        "memory_free_bytes": memory.free,
        "utilization_percent": utilization.gpu,
        "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
    }


def torch_memory(device: str) -> tuple[int, int] | None:
    """(allocated, reserved) bytes held by this process's torch allocator on ``device``; None off-GPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()
