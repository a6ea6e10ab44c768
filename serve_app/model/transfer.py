"""Host values to the model's device without making the host wait for the GPU.

A plain host-to-GPU copy (``torch.tensor(values, device=...)``, or a host tensor indexing a GPU tensor)
waits until every kernel queued before it has run, so in the middle of a generation step it stops the
host from launching the step's next kernels while the GPU works. From pinned memory the copy is queued
like a kernel instead, in order with the work around it. On CPU this is a plain tensor.
"""

from __future__ import annotations

from typing import Any

import torch


def to_device(values: list[Any], device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype, pin_memory=True).to(device, non_blocking=True)
