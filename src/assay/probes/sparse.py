"""Probes on SAE latents `Z [n, d_sae]` (pooled like any feature): 1-sparse and k-sparse.

- `OneSparseProbe`: the single latent whose AUROC is furthest from 0.5, with its sign.
- `KSparseProbe(select="mean_diff")`: the k latents with the largest normalised class-mean gap
  |mean_1 - mean_0| / std, then logistic regression on those k (C chosen on validation).
- `KSparseProbe(select="l1")`: walk an L1-regularised logistic path from the smallest C with any
  active latent upward until k latents are active, then refit on exactly those k with a very weak
  L2 (an unregularised fit diverges on separable data).

`latents` holds the chosen indices (for the debugger); `score` reads only those columns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Self, Sequence

import numpy as np
import torch

from assay.metrics import column_auroc
from assay.probes.base import Probe, as_labels
from assay.probes.linear import DEFAULT_CS, LogisticConfig, LogisticProbe

K_VALUES = (1, 2, 5, 10, 20, 50)
SELECTORS = ("mean_diff", "l1")


def _np(Z) -> np.ndarray:
    if isinstance(Z, torch.Tensor):
        Z = Z.detach().cpu().numpy()
    Z = np.asarray(Z, dtype=np.float32)
    if Z.ndim != 2:
        raise ValueError(f"SAE probes take pooled latents Z [n, d_sae]; got shape {Z.shape}")
    return Z


def mean_diff_scores(Z, y) -> np.ndarray:
    """|mean_1 - mean_0| / std over all examples; dead (constant) latents score 0."""
    Z, y = _np(Z).astype(np.float64), as_labels(y)
    gap = np.abs(Z[y == 1].mean(0) - Z[y == 0].mean(0))
    sd = Z.std(0)
    return np.where(sd > 0, gap / np.where(sd > 0, sd, 1.0), 0.0)


def l1_logistic(X: np.ndarray, y: np.ndarray, lam: float, w: np.ndarray, b: float, *, tol: float = 1e-9,
                max_newton: int = 100) -> tuple[np.ndarray, float]:
    """min over (w, b) of sum_i logloss(x_i w + b) + lam ||w||_1, the intercept unpenalised, from
    the warm start (w, b). Proximal Newton as in glmnet: each step fits the weighted lasso of the
    log-loss's quadratic model with scikit-learn's coordinate descent, then backtracks until the
    objective decreases. liblinear solves the same problem but stalls when a few sparse latents
    nearly separate the classes (1,000 iterations, minutes, and still short of the optimum at a
    fixed template position); this converges in a handful of Newton steps."""
    from scipy.special import expit
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    def objective(w: np.ndarray, b: float) -> float:
        z = X @ w + b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + lam * np.abs(w).sum())

    f = objective(w, b)
    lasso = Lasso(fit_intercept=True, warm_start=True, tol=1e-8, max_iter=100_000)
    for _ in range(max_newton):
        z = X @ w + b
        p = expit(z)
        h = np.maximum(p * (1 - p), 1e-10)
        # scikit-learn rescales sample weights to sum to n, so its alpha is lam / sum(h)
        lasso.set_params(alpha=lam / h.sum())
        lasso.coef_ = w.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lasso.fit(X, z + (y - p) / h, sample_weight=h)
        dw, db = lasso.coef_ - w, float(lasso.intercept_) - b
        t, f_new = 1.0, objective(w + dw, b + db)
        while f_new > f and t > 1e-6:
            t /= 2
            f_new = objective(w + t * dw, b + t * db)
        if f_new > f:
            break
        w, b = w + t * dw, b + t * db
        converged = f - f_new <= tol * max(1.0, abs(f))
        f = f_new
        if converged:
            break
    return w, b


def l1_path_order(Z, y, ks: Sequence[int], *, grid_per_decade: int = 10, decades: float = 5.0,
                  bisect: int = 12) -> tuple[np.ndarray, list[dict]]:
    """Latents in the order they become active on the L1 logistic path (columns scaled to unit
    std without centring so sparse latents stay sparse; objective sum logloss + ||w||_1 / C), up
    to max(ks) of them, followed by the latents constant on the training set; returns (order,
    path). One walk serves every k: `order[:k]` are the first k latents to enter.

    The path is walked on a log grid of C from the smallest C with any active latent; where one
    grid step admits several latents and a k in `ks` falls strictly inside that step, the step is
    bisected on log C so the first k are exact; otherwise simultaneous entrants are ordered by
    |weight| where they entered. Each fit starts from the previous one's solution.
    """
    Z, y = _np(Z).astype(np.float64), as_labels(y).astype(np.float64)
    sd = Z.std(0)
    alive = np.nonzero(sd > 0)[0]
    dead = np.nonzero(sd == 0)[0]
    # With fewer varying latents than k (e.g. one fixed template position), the rest are constant
    # on train and carry nothing: they go last, so a k-sparse probe there uses every varying latent.
    ks = sorted({min(k, len(alive)) for k in ks} - {0})
    if not ks:
        return dead.astype(np.int64), []
    k_max = max(ks)
    X = Z[:, alive] / sd[alive]
    # At w = 0 the optimal intercept is logit(mean y), so latent j enters once C |X_j^T (y - ybar)| > 1.
    corr = np.abs(X.T @ (y - y.mean()))
    c0 = 1.0 / corr.max()
    path: list[dict] = []
    # Screening (a working set checked by the KKT conditions, as glmnet's strong rules): fit on
    # the latents most correlated with the label, then add any latent whose zero weight violates
    # optimality, |C X_j^T (p - y)| <= 1, and refit. Exact, and far cheaper than fitting on all
    # latents, since the first k_max to enter are few.
    work = set(np.argsort(-corr)[: max(100, 4 * k_max)].tolist())
    state = {"w": np.zeros(len(alive)), "b": float(np.log(y.mean() / (1 - y.mean())))}

    def fit(C: float) -> np.ndarray:
        while True:
            cols = np.array(sorted(work))
            w_cols, b = l1_logistic(X[:, cols], y, 1.0 / C, state["w"][cols], state["b"])
            p = 1 / (1 + np.exp(-(X[:, cols] @ w_cols + b)))
            grad = C * np.abs(X.T @ (p - y))
            violators = [j for j in np.nonzero(grad > 1 + 1e-3)[0].tolist() if j not in work]
            if not violators:
                break
            work.update(violators)
        w = np.zeros(len(alive))
        w[cols] = w_cols
        state["w"], state["b"] = w, b
        path.append({"C": float(C), "n_active": int(np.count_nonzero(w)), "working_set": len(cols)})
        return w

    order: list[int] = []

    def admit(lo: float, hi: float, w_hi: np.ndarray, depth: int) -> None:
        new = [j for j in np.nonzero(w_hi)[0] if j not in seen]
        crosses = any(len(order) < k < len(order) + len(new) for k in ks)
        if len(new) > 1 and crosses and depth < bisect:
            mid = float(np.sqrt(lo * hi))
            w_mid = fit(mid)
            admit(lo, mid, w_mid, depth + 1)
            admit(mid, hi, w_hi, depth + 1)
            return
        for j in sorted(new, key=lambda j: -abs(w_hi[j])):
            order.append(int(j))
            seen.add(int(j))

    seen: set[int] = set()
    lo = c0
    w = np.zeros(len(alive))
    for C in c0 * np.logspace(0, decades, int(decades * grid_per_decade) + 1):
        w = fit(C)
        admit(lo, C, w, 0)
        lo = C
        if len(order) >= k_max:
            break
    if len(order) < k_max:  # path ended first: fill with the largest weights, then correlations
        rest = [int(j) for j in np.lexsort((-corr, -np.abs(w))) if int(j) not in seen]
        order += rest[: k_max - len(order)]
    return np.r_[alive[order[:k_max]], dead].astype(np.int64), path


def l1_path_select(Z, y, k: int, **kw) -> tuple[np.ndarray, list[dict]]:
    """The first k latents to become active on the L1 logistic path (see `l1_path_order`)."""
    return l1_path_order(Z, y, [k], **kw)


@dataclass(frozen=True)
class OneSparseConfig:
    select_on: str = "train"  # "train" or "val": which split's AUROC picks the latent


class OneSparseProbe(Probe):
    Config = OneSparseConfig

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        Zs, ys = (X_val, y_val) if self.config.select_on == "val" and X_val is not None else (X, y)
        auc = column_auroc(_np(Zs), as_labels(ys))
        j = int(np.argmax(np.abs(auc - 0.5)))
        self.latents = np.array([j], dtype=np.int64)
        self.sign = 1.0 if auc[j] >= 0.5 else -1.0
        top = np.argsort(-np.abs(auc - 0.5))[:10]
        self.meta = {"latents": self.latents.tolist(), "sign": self.sign, "auroc": float(auc[j]),
                     "top10": [{"latent": int(i), "auroc": float(auc[i])} for i in top]}
        return self

    def score(self, X, mask=None) -> np.ndarray:
        return self.sign * _np(X)[:, self.latents[0]].astype(np.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return {"latents": torch.as_tensor(self.latents), "sign": torch.tensor([self.sign], dtype=torch.float64)}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        self.latents, self.sign = t["latents"].numpy().astype(np.int64), float(t["sign"][0])


@dataclass(frozen=True)
class KSparseConfig:
    k: int = 20
    select: str = "mean_diff"  # "mean_diff" or "l1"
    Cs: tuple[float, ...] = DEFAULT_CS  # refit grid for mean_diff (chosen on validation)
    refit_C: float = 1e4  # the l1 refit: very weak L2, only so separable data stays finite
    seed: int = 0
    device: str | None = None


class KSparseProbe(Probe):
    Config = KSparseConfig

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None,
            order: np.ndarray | None = None) -> Self:
        """`order`: latents already ranked by this probe's selector on the same training data
        (`selection_order`), so a sweep over k ranks once."""
        cfg = self.config
        Z = _np(X)
        if cfg.select not in SELECTORS:
            raise ValueError(f"select must be one of {SELECTORS}, got {cfg.select!r}")
        path = None
        if order is None:
            order, path = selection_order(Z, y, cfg.select, [cfg.k])
        if len(order) < cfg.k:
            raise ValueError(f"the selection order holds {len(order)} latents; k={cfg.k} needs more")
        self.latents = np.asarray(order[: cfg.k], dtype=np.int64)
        Cs = cfg.Cs if cfg.select == "mean_diff" else (cfg.refit_C,)
        self.head = LogisticProbe(LogisticConfig(Cs=Cs, seed=cfg.seed, device=cfg.device))
        Zv = None if X_val is None else _np(X_val)[:, self.latents]
        self.head.fit(Z[:, self.latents], y, Zv, y_val)
        self.meta = {"latents": self.latents.tolist(), "head": self.head.meta, "l1_path": path}
        return self

    def coef_full(self, d_sae: int) -> np.ndarray:
        """Raw-space weights over all `d_sae` latents (zero outside `latents`)."""
        w = np.zeros(d_sae)
        w[self.latents] = self.head.direction().cpu().numpy()
        return w

    def score(self, X, mask=None) -> np.ndarray:
        return self.head.score(_np(X)[:, self.latents])

    def state(self) -> dict[str, torch.Tensor]:
        return {"latents": torch.as_tensor(self.latents), **{f"head.{k}": v for k, v in self.head.state().items()}}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        self.latents = t["latents"].numpy().astype(np.int64)
        self.head = LogisticProbe(LogisticConfig(Cs=(self.meta.get("head", {}).get("C") or 1.0,), device=self.config.device))
        self.head.meta = self.meta.get("head", {})
        self.head.set_state({k.removeprefix("head."): v for k, v in t.items() if k.startswith("head.")})


def selection_order(Z, y, select: str, ks: Sequence[int]) -> tuple[np.ndarray, list[dict] | None]:
    """Latents ranked by a k-sparse selector on training data, at least max(ks) of them, and the
    L1 path when there is one. Mean difference ranks every latent; the L1 path stops at max(ks)."""
    if select == "mean_diff":
        return np.argsort(-mean_diff_scores(Z, y), kind="stable").astype(np.int64), None
    if select == "l1":
        return l1_path_order(Z, y, ks)
    raise ValueError(f"select must be one of {SELECTORS}, got {select!r}")


def fit_k_sweep(Z, y, Z_val=None, y_val=None, *, ks=K_VALUES, select: str = "mean_diff", **config) -> dict[int, KSparseProbe]:
    """One k-sparse probe per k (the study's sparsity sweep), the latents ranked once."""
    order, path = selection_order(Z, y, select, ks)
    probes = {k: KSparseProbe(KSparseConfig(k=k, select=select, **config)).fit(Z, y, Z_val, y_val, order=order)
              for k in ks}
    for p in probes.values():
        p.meta["l1_path"] = path
    return probes
