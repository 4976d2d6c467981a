"""The optimizer setup of the trainer, kept free of the loop's imports so the benchmark (which runs
in open_clip's venv) builds exactly the optimizer the trainer uses."""
from __future__ import annotations

from typing import Any

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, the class token and the temperature (1-D params)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.98),
                    eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the fused kernel where the device has one (CPU and CUDA do).

    Fused AdamW does the whole update in one kernel per dtype/device group instead of ~10 small ops
    per parameter: on the benchmark model it is ~2 ms instead of ~10 ms per step on 2 CPU cores.
    The state dict is the same as the for-loop version's, so checkpoints resume either way.
    """
    groups = param_groups(model, weight_decay)
    params = [p for group in groups for p in group["params"]]
    fused = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
