"""A token-level linear probe: a logistic regression on single tokens, pooled at scoring time by the
strongest local evidence (max of rolling means, as in Kramar et al. 2026).

A probe fitted on a prompt's mean reads a long jailbreak template as mostly template: 20 tokens of
request inside 500 of template are diluted to nothing. This probe scores every token alone, so a
request keeps its score wherever it sits, and the prompt's score is the best window of `window`
consecutive tokens. What it learns depends on which tokens carry the label (`carries`): a request
wrapped in a template carries its label on the request's own tokens, while the template's tokens are
labelled benign, since the same templates wrap benign requests too. Without `carries` every real
token carries its prompt's label.

On the full benchmark (benchmarks/results/token_probes.json) it finds requests inside held-out
jailbreak templates better than a probe on the prompt's mean (Pliny's family held out: 0.81 against
0.74 AUROC) but learns topic words, not intent: holding out a harmful source against topic-matched
benign prompts it ranks at 0.49-0.67. `LocatedLogisticProbe` below keeps the first and not the second.

Fitting reads a fixed sample of tokens per prompt (half from the label-carrying tokens), so memory is
`prompts x tokens_per_prompt x d`, never a padded `[prompts, longest, d]` copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import torch

from assay.probes.base import Probe, as_labels
from assay.probes.logistic import fit_logreg, standardize_stats
from assay.runtime import default_device

POOLS = ("rmax", "max", "mean")


@dataclass(frozen=True)
class TokenLogisticConfig:
    C: float = 1e-3  # inverse L2 strength on standardised tokens
    tokens_per_prompt: int = 16  # sampled per prompt for the fit, half from the label-carrying tokens
    pool: str = "rmax"  # rmax: max over windows of `window` consecutive tokens of their mean logit
    window: int = 10
    max_iter: int = 100
    tol: float = 1e-8
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r}: choose one of {', '.join(POOLS)}")
        if self.window < 1 or self.tokens_per_prompt < 1 or not self.C > 0:
            raise ValueError("window and tokens_per_prompt must be at least 1 and C positive")


def pool_token_logits(z: np.ndarray, pool: str, window: int) -> float:
    """One prompt's score from its tokens' logits `z [t]`: the max over windows of `window`
    consecutive tokens of their mean (a prompt shorter than the window: its mean), the max, or the mean."""
    if len(z) == 0:
        return 0.0
    if pool == "max":
        return float(z.max())
    if pool == "mean" or len(z) <= window:
        return float(z.mean())
    c = np.concatenate([[0.0], np.cumsum(z, dtype=np.float64)])
    return float(((c[window:] - c[:-window]) / window).max())


def sample_positions(real: np.ndarray, carries: np.ndarray, n: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` positions of one prompt's real tokens, half from those that carry its label and
    the rest from the others (topped up from whichever has more), and whether each carries it.
    A prompt with `n` or fewer real tokens gives all of them."""
    yes, no = np.flatnonzero(real & carries), np.flatnonzero(real & ~carries)
    k_yes = min(len(yes), max(n // 2, n - len(no)))
    k_no = min(len(no), n - k_yes)
    pos = np.concatenate([rng.choice(yes, k_yes, replace=False) if k_yes else yes[:0],
                          rng.choice(no, k_no, replace=False) if k_no else no[:0]])
    return pos, np.r_[np.ones(k_yes, bool), np.zeros(k_no, bool)]


class TokenLogisticProbe(Probe):
    Config = TokenLogisticConfig

    def _device(self) -> torch.device:
        return torch.device(self.config.device) if self.config.device else default_device()

    @staticmethod
    def _check(X, mask) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(X, torch.Tensor):
            X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        if X.ndim != 3 or mask is None:
            raise ValueError("token-level probes take per-token X [n, T, d] and a bool mask [n, T]")
        return X, torch.as_tensor(mask).to(torch.bool)

    def sample(self, mask: torch.Tensor, carries: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, position, carries) of the tokens the fit reads (`sample_positions` per prompt)."""
        rng = np.random.default_rng(self.config.seed)
        m, c = mask.cpu().numpy(), carries.cpu().numpy()
        rows, pos, car = [], [], []
        for i in range(len(m)):
            p, k = sample_positions(m[i], c[i], self.config.tokens_per_prompt, rng)
            rows.append(np.full(len(p), i)), pos.append(p), car.append(k)
        return np.concatenate(rows), np.concatenate(pos), np.concatenate(car)

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None, carries=None) -> Self:
        """Fit on a sample of tokens of `X [n, T, d]` (real where `mask`); a sampled token's label is its
        prompt's where `carries [n, T]` (default: every real token) and benign elsewhere. `X` may
        already be a sample (T = tokens_per_prompt): then every real token is read."""
        cfg, dev = self.config, self._device()
        X, m = self._check(X, mask)
        y_np = as_labels(y)
        c = m if carries is None else torch.as_tensor(carries).to(torch.bool) & m
        rows, pos, car = self.sample(m, c)
        T = torch.as_tensor(X[torch.as_tensor(rows), torch.as_tensor(pos)], dtype=torch.float64, device=dev)
        labels = torch.as_tensor(np.where(car, y_np[rows], 0), dtype=torch.float64, device=dev)
        self.mu, self.sd = standardize_stats(T)
        self.theta = fit_logreg((T - self.mu) / self.sd, labels, cfg.C, max_iter=cfg.max_iter, tol=cfg.tol)
        self.meta = {"n_prompts": int(len(y_np)), "n_tokens": int(len(rows)), "n_carrying": int(car.sum()),
                     "token_positive_rate": float(labels.mean()), "d_model": int(X.shape[-1])}
        return self

    def _token_logits(self, X: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Logits of every position of `X [n, T, d]` `[n, T]`, in float32 batches (bf16 inputs stay bf16 until then)."""
        dev = self._device()
        w = (self.theta[:-1] / self.sd).to(dev, torch.float32)
        b = float(self.theta[-1] - (self.mu / self.sd) @ self.theta[:-1])
        out = [(X[i:i + batch].to(dev, torch.float32) @ w + b).cpu() for i in range(0, len(X), batch)]
        return torch.cat(out) if out else torch.zeros(0, X.shape[1])

    def token_scores(self, X, mask=None) -> list[np.ndarray]:
        """Per real token, the logit the probe gives that token alone: where the evidence sits."""
        X, m = self._check(X, mask)
        z = self._token_logits(X)
        return [z[j][m[j]].double().numpy() for j in range(len(X))]

    def score(self, X, mask=None) -> np.ndarray:
        cfg = self.config
        return np.array([pool_token_logits(z, cfg.pool, cfg.window) for z in self.token_scores(X, mask)],
                        dtype=np.float64)

    def state(self) -> dict[str, torch.Tensor]:
        return {"mu": self.mu, "sd": self.sd, "theta": self.theta}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        dev = self._device()
        self.mu, self.sd, self.theta = (t[k].to(dev, torch.float64) for k in ("mu", "sd", "theta"))


@dataclass(frozen=True)
class LocatedConfig:
    locator_C: float = 1e-3  # the locator's inverse L2 strength on standardised tokens
    tokens_per_prompt: int = 16  # the locator's sample per prompt, half from the request
    sharpen: float = 6.0  # a token's weight is p^sharpen, p the locator's probability that it is the request
    Cs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # the head's, chosen as dense-logistic's
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.sharpen > 0 or not self.locator_C > 0 or self.tokens_per_prompt < 1:
            raise ValueError("sharpen and locator_C must be positive and tokens_per_prompt at least 1")


class LocatedLogisticProbe(Probe):
    """A logistic regression on the mean of the tokens a locator takes for the request.

    The locator is a token-level logistic regression taught where the request sits (`carries`: the
    request's tokens against the template around it, in harmful and benign prompts alike), so it
    knows requests, not intent. A prompt is pooled as the mean of its tokens weighted by
    p^`sharpen` (p: the locator's probability), and a dense probe reads that vector: what the
    prompt asks, whatever wraps it. Unlike a probe on single tokens, the head reads the request's
    tokens together, with their context (on the full benchmark a single-token probe ranked held-out
    harmful sources against topic-matched benign prompts at 0.49-0.67 AUROC; this one 0.95-0.99:
    benchmarks/results/token_probes.json).
    """

    Config = LocatedConfig

    def _locator(self) -> TokenLogisticProbe:
        cfg = self.config
        return TokenLogisticProbe(C=cfg.locator_C, tokens_per_prompt=cfg.tokens_per_prompt, seed=cfg.seed,
                                  device=cfg.device)

    def _head(self) -> Probe:
        from assay.probes.linear import LogisticProbe

        return LogisticProbe(Cs=self.config.Cs, seed=self.config.seed, device=self.config.device)

    def fit_locator(self, X, mask, carries) -> Self:
        """The locator, on (a sample of) tokens: those in `carries` are the request."""
        X, m = TokenLogisticProbe._check(X, mask)
        self.locator = self._locator().fit(X, np.ones(len(X), dtype=int), mask=m, carries=carries)
        return self

    def weights(self, X, mask=None) -> torch.Tensor:
        """Each token's weight in the pooled mean `[n, T]` (0 on padding), summing to 1 per prompt."""
        X, m = TokenLogisticProbe._check(X, mask)
        p = torch.sigmoid(self.locator._token_logits(X)).double().pow(self.config.sharpen) * m
        return p / p.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)

    def pool(self, X, mask=None) -> torch.Tensor:
        """The located mean of each prompt `[n, d]` (float64)."""
        X, m = TokenLogisticProbe._check(X, mask)
        a = self.weights(X, m)
        return torch.cat([torch.einsum("bt,btd->bd", a[i:i + 64], X[i:i + 64].double())
                          for i in range(0, len(X), 64)]) if len(X) else torch.zeros(0, X.shape[-1])

    def fit_head(self, pooled, y) -> Self:
        """The dense head on located means (`pool`) of the training prompts."""
        self.head = self._head().fit(pooled, y)
        self.meta = {"locator": self.locator.meta, "head": self.head.meta}
        return self

    def fit(self, X, y, X_val=None, y_val=None, *, mask=None, mask_val=None, carries=None) -> Self:
        """Both stages on per-token `X [n, T, d]`; without `carries` every real token is the request
        (the locator then only learns padding from tokens, and the pool is the plain mean)."""
        X, m = TokenLogisticProbe._check(X, mask)
        self.fit_locator(X, m, m if carries is None else carries)
        return self.fit_head(self.pool(X, m), y)

    def score(self, X, mask=None) -> np.ndarray:
        return np.asarray(self.head.score(self.pool(X, mask)), dtype=np.float64)

    def token_scores(self, X, mask=None) -> list[np.ndarray]:
        """Each real token's share of the score: its weight times the head's logit of it alone, so a
        prompt's token scores plus the head's intercept sum to its score."""
        X, m = TokenLogisticProbe._check(X, mask)
        a = self.weights(X, m)
        w = self.head.direction().to(torch.float64).cpu()
        out = []
        for j in range(len(X)):
            x = X[j][m[j]].double()
            out.append((a[j][m[j]] * (x @ w - float(self.head.mu.cpu() @ w))).numpy())
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"locator.{k}": v for k, v in self.locator.state().items()},
                **{f"head.{k}": v for k, v in self.head.state().items()}}

    def set_state(self, t: dict[str, torch.Tensor]) -> None:
        self.locator, self.head = self._locator(), self._head()
        self.locator.set_state({k.removeprefix("locator."): v for k, v in t.items() if k.startswith("locator.")})
        self.head.set_state({k.removeprefix("head."): v for k, v in t.items() if k.startswith("head.")})
