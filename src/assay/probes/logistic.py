"""Logistic regression in torch (LBFGS, float64), so the same code runs on CPU and CUDA.

Objective, identical to scikit-learn's `LogisticRegression(C=C)` on standardised features:
    sum_i logloss(w.x_i + b, y_i) + ||w||^2 / (2 C),  intercept not penalised.
We minimise it divided by n (same minimiser, better-scaled gradients for LBFGS's tolerances).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def standardize_stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and (population) std; constant features get std 1 so they stay 0."""
    mu = X.mean(0)
    sd = X.std(0, unbiased=False)
    return mu, torch.where(sd > 0, sd, torch.ones_like(sd))


def fit_logreg(
    X: torch.Tensor,
    y: torch.Tensor,
    C: float,
    *,
    init: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> torch.Tensor:
    """Minimise the L2-regularised log loss; returns `theta [d + 1]` = (w, b). `X`, `y` float64.

    `C = inf` fits without regularisation (diverges on separable data; keep C finite there)."""
    n, d = X.shape
    theta = (init.clone() if init is not None else torch.zeros(d + 1, dtype=X.dtype, device=X.device))
    theta.requires_grad_(True)
    reg = 0.0 if np.isinf(C) else 1.0 / (2.0 * C * n)
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = X @ theta[:d] + theta[d]
        loss = F.binary_cross_entropy_with_logits(z, y, reduction="mean") + reg * theta[:d].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def logloss(z: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.binary_cross_entropy_with_logits(z, y, reduction="mean"))
