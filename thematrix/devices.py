"""Host-to-device copies that do not stall the stream.

A copy from ordinary (pageable) host memory to a GPU first waits for the work already queued on the CUDA stream:
the host stops queueing ahead, and the GPU idles while it launches the next kernels. The denoising loop's small
copies (timesteps, control ids, schedule tables) go through pinned memory instead, which the GPU reads in queue
order without the host waiting.
"""

from __future__ import annotations

import torch


def copy_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``: from the CPU to a GPU through pinned memory without waiting, otherwise ``.to``."""
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
