"""Dense pooled probes: logistic regression (C chosen on validation AUROC) and difference of means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import torch

from assay.metrics import auroc
from assay.probes.base import Probe, as_labels, as_tensor
from assay.probes.logistic import fit_logreg, logloss, row_basis, standardize_stats
from assay.runtime import default_device

DEFAULT_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _check_pooled(X: torch.Tensor) -> None:
    if X.ndim != 2:
        raise ValueError(f"pooled probes take X [n, d]; got shape {tuple(X.shape)} (pick an aggregation)")


def stratified_holdout(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out index arrays with the class balance of `y` in both."""
    rng = np.random.default_rng(seed)
    held = []
    for c in (0, 1):
        idx = rng.permutation(np.nonzero(y == c)[0])
        held.append(idx[: max(1, int(round(frac * len(idx))))])
    held_idx = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(y)), held_idx), held_idx


@dataclass(frozen=True)
class LogisticConfig:
    Cs: tuple[float, ...] = DEFAULT_CS  # inverse L2 strengths tried; one value = no selection
    standardize: bool = True
    max_iter: int = 1000
    tol: float = 1e-8
    holdout: float = 0.2  # validation fraction carved from train when no val set is given
    seed: int = 0
    device: str | None = None  # None: CUDA when available


class LogisticProbe(Probe):
    """Standardise, then L2 logistic regression; C picked by validation AUROC (ties: lower
    validation log loss). The fit at the chosen C on the training data is kept: validation only
    chooses C, so it stays clean for threshold calibration."""

    Config = LogisticConfig

    def _device(self) -> torch.device:
        return torch.device(self.config.device) if self.config.device else default_device()

    def _prep(self, X) -> torch.Tensor:
        X = as_tensor(X, torch.float64, self._device())
        _check_pooled(X)
        return (X - self.mu) / self.sd

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        cfg, dev = self.config, self._device()
        X = as_tensor(X, torch.float64, dev)
        _check_pooled(X)
        y_np = as_labels(y)
        refit_all = False
        if X_val is None and len(cfg.Cs) > 1:
            tr, va = stratified_holdout(y_np, cfg.holdout, cfg.seed)
            X, X_val, y_np, y_val = X[tr], X[va], y_np[tr], y_np[va]
            refit_all, X_all, y_all = True, torch.cat([X, X_val]), np.r_[y_np, y_val]
        if cfg.standardize:
            self.mu, self.sd = standardize_stats(X)
        else:
            self.mu, self.sd = torch.zeros(X.shape[1], dtype=X.dtype, device=dev), torch.ones(X.shape[1], dtype=X.dtype, device=dev)
        Xs, yt = (X - self.mu) / self.sd, torch.as_tensor(y_np, dtype=torch.float64, device=dev)
        fits, table = {}, []
        theta = None
        basis = row_basis(Xs) if Xs.shape[0] < Xs.shape[1] else None  # one QR for every C
        for C in sorted(cfg.Cs):  # strong -> weak regularisation, warm-started
            theta = fit_logreg(Xs, yt, C, init=theta, max_iter=cfg.max_iter, tol=cfg.tol, basis=basis)
            fits[C] = theta
            if X_val is not None and len(cfg.Cs) > 1:
                yv = as_labels(y_val)
                zv = self._prep(X_val) @ theta[:-1] + theta[-1]
                table.append({"C": C, "val_auroc": auroc(zv.cpu().numpy(), yv),
                              "val_logloss": logloss(zv, torch.as_tensor(yv, dtype=torch.float64, device=dev))})
        if table:
            best = max(table, key=lambda r: (round(r["val_auroc"], 6), -r["val_logloss"]))
            self.C = best["C"]
        else:
            self.C = cfg.Cs[0]
        self.theta = fits[self.C]
        if refit_all:  # selection used a carved-out holdout: now fit the chosen C on everything
            self.mu, self.sd = standardize_stats(X_all) if cfg.standardize else (self.mu, self.sd)
            self.theta = fit_logreg((X_all - self.mu) / self.sd, torch.as_tensor(y_all, dtype=torch.float64, device=dev),
                                    self.C, init=self.theta, max_iter=cfg.max_iter, tol=cfg.tol)
        self.meta = {"C": self.C, "selection": table, "n_train": int(len(y_np))}
        return self

    @property
    def coef(self) -> torch.Tensor:
        """Weights in standardised feature space."""
        return self.theta[:-1]

    @property
    def intercept(self) -> float:
        return float(self.theta[-1])

    def direction(self) -> torch.Tensor:
        """Weights in raw feature space (score = x . direction + offset)."""
        return self.coef / self.sd

    def score(self, X, mask=None) -> np.ndarray:
        return (self._prep(X) @ self.coef + self.theta[-1]).cpu().numpy()

    def state(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu, "sd": self.sd, "theta": self.theta}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        dev = self._device()
        self.mu, self.sd, self.theta = (t[k].to(dev, torch.float64) for k in ("mu", "sd", "theta"))
        self.C = self.meta.get("C")


@dataclass(frozen=True)
class DiffMeanConfig:
    # "none": the raw class-mean difference; "standardize": the same in per-feature standardised
    # space; "whiten": also divide out the shared covariance (Ledoit-Wolf shrunk), i.e. LDA.
    normalize: str = "none"
    device: str | None = None


DIFFMEAN_NORMALIZE = ("none", "standardize", "whiten")


class DiffMeanProbe(Probe):
    """Project onto the difference of class means, centred at their midpoint. Nothing to tune.

    On raw residual streams a few massive-activation dimensions can hold most of the variance and
    of the mean difference, so the raw direction mostly measures them; `normalize` says whether
    to standardise features first, or whiten them (LDA), before taking the difference."""

    Config = DiffMeanConfig

    def _dev(self) -> torch.device:
        return torch.device(self.config.device) if self.config.device else default_device()

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        norm = self.config.normalize
        if norm not in DIFFMEAN_NORMALIZE:
            raise ValueError(f"normalize must be one of {DIFFMEAN_NORMALIZE}, got {norm!r}")
        dev = self._dev()
        X = as_tensor(X, torch.float64, dev)
        _check_pooled(X)
        yb = torch.as_tensor(as_labels(y), device=dev).bool()
        mu, sd = standardize_stats(X) if norm != "none" else (torch.zeros_like(X[0]), torch.ones_like(X[0]))
        Xs = (X - mu) / sd
        mu1, mu0 = Xs[yb].mean(0), Xs[~yb].mean(0)
        if norm == "whiten":
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

            lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Xs.cpu().numpy(), yb.cpu().numpy())
            w = torch.as_tensor(lda.coef_.ravel(), dtype=torch.float64, device=dev)
        else:
            w = mu1 - mu0
        w = w / w.norm().clamp(min=1e-12)
        # back to raw space: score = ((x - mu) / sd) . w - midpoint
        self.w = w / sd
        self.b = -(w @ (mu1 + mu0) / 2) - self.w @ mu
        self.meta = {"mean_gap": float((mu1 - mu0).norm()), "normalize": norm}
        return self

    def score(self, X, mask=None) -> np.ndarray:
        X = as_tensor(X, torch.float64, self.w.device)
        _check_pooled(X)
        return (X @ self.w + self.b).cpu().numpy()

    def state(self) -> dict[str, torch.Tensor]:
        return {"w": self.w, "b": self.b.reshape(1)}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        dev = self._dev()
        self.w, self.b = t["w"].to(dev, torch.float64), t["b"].to(dev, torch.float64)[0]
