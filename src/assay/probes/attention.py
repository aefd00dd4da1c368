"""Attention probes over per-token activations `X [n, T, d]` with a bool mask `[n, T]`.

`AttentionProbe`: per head h, score_h = sum_t softmax_t(q_h . x_t) (v_h . x_t); the probe's logit is
sum_h score_h + b. It learns where to look, so it can find one telling token among many that a
mean would dilute.

`RollingAttentionProbe` (GDM's production "max of rolling means"): the same attention-weighted
mean, but within every window of `window` consecutive tokens, then the max over windows: long
prompts cannot wash out a short harmful span.

Both train with AdamW (weight decay), early stopping on validation AUROC (ties: validation
log loss), inputs standardised per
dimension with token statistics from the training set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Self

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from assay.metrics import auroc
from assay.probes.base import Probe, as_labels, as_tensor
from assay.probes.linear import stratified_holdout
from assay.runtime import default_device


class AttentionHead(nn.Module):
    def __init__(self, d: int, n_heads: int, window: int | None) -> None:
        super().__init__()
        self.query = nn.Linear(d, n_heads)
        self.value = nn.Linear(d, n_heads)
        self.bias = nn.Parameter(torch.zeros(()))
        self.window = window

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        a, v = self.query(x), self.value(x)  # [n, T, H]
        if self.window is None:
            a = a.masked_fill(~m.unsqueeze(-1), float("-inf"))
            w = torch.softmax(a, dim=1).nan_to_num(0.0)  # all-masked rows -> 0
            return (w * v).sum(1).sum(-1) + self.bias
        return self._rolling(a, v, m).sum(-1) + self.bias

    def _rolling(self, a: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        n, T, H = a.shape
        k = self.window
        if T < k:  # shorter than one window: pad so there is exactly one
            pad = k - T
            a, v = F.pad(a, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
            m = F.pad(m, (0, pad), value=False)
        # [n, H, W, k] windows of stride 1
        aw = a.transpose(1, 2).unfold(-1, k, 1)
        vw = v.transpose(1, 2).unfold(-1, k, 1)
        mw = m.unfold(-1, k, 1).unsqueeze(1)  # [n, 1, W, k]
        w = torch.softmax(aw.masked_fill(~mw, float("-inf")), dim=-1).nan_to_num(0.0)
        means = (w * vw).sum(-1)  # [n, H, W]
        # a window with no real token must never win the max
        means = means.masked_fill(~mw.any(-1), float("-inf"))
        out = means.amax(-1)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))


def _token_mean_std(X: torch.Tensor, m: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (ddof=1) over the real tokens of `X [n, T, d]`, in float64, a chunk of
    examples at a time (no float32 copy of every token)."""
    s1 = torch.zeros(X.shape[-1], dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    n = 0
    for i in range(0, len(X), chunk):
        t = X[i : i + chunk][m[i : i + chunk]].double()
        s1 += t.sum(0)
        s2 += t.pow(2).sum(0)
        n += len(t)
    mean = s1 / n
    var = (s2 - n * mean.pow(2)) / max(n - 1, 1)
    return mean.float(), var.clamp(min=0).sqrt().float()


@dataclass(frozen=True)
class AttentionConfig:
    n_heads: int = 4
    window: int | None = None  # None: attend over the whole prompt
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10  # epochs without a better validation AUROC before stopping
    holdout: float = 0.2
    seed: int = 0
    device: str | None = None


class AttentionProbe(Probe):
    Config = AttentionConfig

    def _device(self) -> torch.device:
        return torch.device(self.config.device) if self.config.device else default_device()

    def _inputs(self, X, mask) -> tuple[torch.Tensor, torch.Tensor]:
        # bfloat16 token tensors (activations extracted in bf16) stay so: half the memory and the
        # traffic of every epoch; each batch is normalised in float32.
        if not (isinstance(X, torch.Tensor) and X.dtype in (torch.float32, torch.bfloat16)):
            X = as_tensor(X, torch.float32, "cpu")
        X = X.cpu()
        if X.ndim != 3 or mask is None:
            raise ValueError("attention probes take per-token X [n, T, d] and a bool mask [n, T]")
        return X, torch.as_tensor(mask).to("cpu", torch.bool)

    def _logits(self, X: torch.Tensor, m: torch.Tensor, batch: int = 256) -> torch.Tensor:
        dev, out = self._device(), []
        self.net.eval()
        with torch.no_grad():
            for i in range(0, len(X), batch):
                xb = ((X[i : i + batch].to(dev, torch.float32) - self.mu) / self.sd)
                out.append(self.net(xb, m[i : i + batch].to(dev)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None) -> Self:
        cfg, dev = self.config, self._device()
        X, m = self._inputs(X, mask)
        y_np = as_labels(y)
        if X_val is None:
            tr, va = stratified_holdout(y_np, cfg.holdout, cfg.seed)
            X, X_val, m, mask_val, y_np, y_val = X[tr], X[va], m[tr], m[va], y_np[tr], y_np[va]
        Xv, mv = self._inputs(X_val, mask_val)
        yv = as_labels(y_val)
        self.mu, self.sd = _token_mean_std(X, m)
        self.mu, self.sd = self.mu.to(dev), self.sd.clamp(min=1e-6).to(dev)
        torch.manual_seed(cfg.seed)
        self.net = AttentionHead(X.shape[-1], cfg.n_heads, cfg.window).to(dev)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        yt = torch.as_tensor(y_np, dtype=torch.float32)
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_loss, best_state, since, history = -1.0, float("inf"), None, 0, []
        for epoch in range(cfg.max_epochs):
            self.net.train()
            for idx in torch.randperm(len(X), generator=gen).split(cfg.batch_size):
                xb = (X[idx].to(dev, torch.float32) - self.mu) / self.sd
                loss = F.binary_cross_entropy_with_logits(self.net(xb, m[idx].to(dev)), yt[idx].to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
            zv = self._logits(Xv, mv)
            val = auroc(zv.numpy(), yv)
            loss_v = float(F.binary_cross_entropy_with_logits(zv, torch.as_tensor(yv, dtype=torch.float32)))
            history.append(round(float(val), 6))
            # better AUROC, or the same AUROC with lower loss (AUROC saturates at 1.0 early)
            if val > best + 1e-6 or (val > best - 1e-6 and loss_v < best_loss - 1e-4):
                best, best_loss, best_state, since = val, loss_v, copy.deepcopy(self.net.state_dict()), 0
            else:
                since += 1
                if since >= cfg.patience:
                    break
        self.net.load_state_dict(best_state)
        self.meta = {"val_auroc": float(best), "val_loss": best_loss, "epochs": len(history), "val_auroc_history": history,
                     "d_model": int(X.shape[-1])}
        return self

    def score(self, X, mask=None) -> np.ndarray:
        X, m = self._inputs(X, mask)
        return self._logits(X, m).double().numpy()

    def token_scores(self, X, mask=None) -> list[np.ndarray]:
        """Per real token, the logit the probe would give a prompt made of that token alone (its
        value summed over heads, plus the bias): where in the prompt the evidence sits."""
        X, m = self._inputs(X, mask)
        dev = self._device()
        self.net.eval()
        with torch.no_grad():
            v = self.net.value((X.to(dev, torch.float32) - self.mu) / self.sd).sum(-1) + self.net.bias
        return [v[j][m[j]].double().cpu().numpy() for j in range(len(X))]

    def state(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu, "sd": self.sd, **{f"net.{k}": v for k, v in self.net.state_dict().items()}}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        dev = self._device()
        self.mu, self.sd = t["mu"].to(dev), t["sd"].to(dev)
        self.net = AttentionHead(self.mu.shape[0], self.config.n_heads, self.config.window).to(dev)
        self.net.load_state_dict({k.removeprefix("net."): v for k, v in t.items() if k.startswith("net.")})


@dataclass(frozen=True)
class RollingAttentionConfig(AttentionConfig):
    window: int | None = 10


class RollingAttentionProbe(AttentionProbe):
    """GDM's "max of rolling means" attention probe (see module docstring)."""

    Config = RollingAttentionConfig
