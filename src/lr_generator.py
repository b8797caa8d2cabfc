"""Per-step learning rates: linear warm-up, then cosine to ``lr_end``, step decay down to
``lr_end``, or constant."""
import math

import numpy as np


def get_lr(lr_max, total_epochs, steps_per_epoch, warmup_epochs=0, lr_end=0.0,
           schedule="cosine", step_epochs=30, step_gamma=0.1):
    """Return a float32 array with one learning rate per training step."""
    if schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; choose cosine, step or constant")
    total = int(total_epochs * steps_per_epoch)
    warmup = min(int(warmup_epochs * steps_per_epoch), total)
    rates = np.empty(total, np.float32)
    for step in range(total):
        if step < warmup:
            rates[step] = lr_max * (step + 1) / warmup
        elif schedule == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            rates[step] = lr_end + (lr_max - lr_end) * 0.5 * (1 + math.cos(math.pi * progress))
        elif schedule == "step":
            rates[step] = max(lr_max * step_gamma ** (step // (step_epochs * steps_per_epoch)), lr_end)
        else:
            rates[step] = lr_max
    return rates
