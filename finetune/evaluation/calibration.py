"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on validation logits, logits / T."""
from __future__ import annotations

import numpy as np
import torch

MIN_T, MAX_T = 0.01, 100.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """Finds the T > 0 that minimises the cross-entropy of softmax(logits / T).

    Optimises log T with L-BFGS, as the reference implementation does, so T stays positive.
    Top-1 is unchanged by any T; only the confidence is rescaled.

    Args:
        logits: Validation logits, shape (N, C).
        labels: True class indices, shape (N,).
        max_iter: L-BFGS iterations.

    Returns:
        The temperature (> 1 softens an over-confident model, < 1 sharpens an under-confident one).
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    # A model at chance has its NLL minimised by T -> infinity; clip to a range that still means something.
    return float(log_t.detach().exp().clamp(MIN_T, MAX_T))
