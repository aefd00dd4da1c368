"""The interface every SAE architecture implements, and the registry that finds them by name.

An SAE here is an `nn.Module` with SAELens's parameter names and layouts (`W_enc [d_in, d_sae]`,
`W_dec [d_sae, d_in]`, `b_enc`, `b_dec`), so saving is a `state_dict()` away from SAELens's file
format. Each architecture lives in its own module: a config dataclass beside its model class.

`loss(x)` returns a dict of named terms. Keys in `STAT_KEYS` are detached diagnostics the trainer
reads (L0, which latents fired); every other key is a differentiable loss term, and `total` is
their sum. A new architecture therefore needs no trainer change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from assay.errors import InputError
from assay.runtime import resolve_dtype

# Detached diagnostics returned alongside the loss terms (not part of `total`).
STAT_KEYS = frozenset({"l0", "fired"})


@dataclass
class SAEConfig:
    """Fields shared by every architecture (names as in SAELens's `SAEConfig`)."""

    d_in: int
    d_sae: int
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse settings no SAE can train with, before any data is read (one check for all
        architectures: widths, k, coefficients and rates are the same fields everywhere)."""
        import math

        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"SAE {name} must be a positive integer, got {v!r}")
        resolve_dtype(self.dtype)
        k = getattr(self, "k", None)
        if k is not None and not (isinstance(k, (int, float)) and math.isfinite(k) and 0 < k <= self.d_sae):
            raise InputError(f"SAE k must be in (0, width] = (0, {self.d_sae}] (active latents per token), got {k!r}")
        for name, v in asdict(self).items():
            if name.endswith(("_coefficient", "_lr", "omega_0", "bandwidth")) and not (
                    isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"SAE {name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


ARCHITECTURES: dict[str, type["SAE"]] = {}


def register(name: str):
    """Class decorator: make an architecture constructible by name (`build_sae`, the CLI, loading)."""

    def deco(cls: type["SAE"]) -> type["SAE"]:
        cls.architecture = name
        ARCHITECTURES[name] = cls
        return cls

    return deco


class SAE(nn.Module):
    """Base class: linear encoder, nonlinearity (per architecture), linear decoder."""

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SAEConfig]] = SAEConfig
    # The architecture SAELens loads this as, and whether rows of W_dec are kept at unit norm.
    saelens_architecture: ClassVar[str] = "standard"
    unit_norm_decoder: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dtype, device = resolve_dtype(cfg.dtype), torch.device(cfg.device)
        gen = torch.Generator().manual_seed(cfg.seed)
        # Anthropic's April-2024 init (also SAELens's): decoder rows at norm 0.1, encoder = W_dec^T.
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float32)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * (1.0 if self.unit_norm_decoder else 0.1)
        self.W_dec = nn.Parameter(w_dec.to(device, dtype))
        self.W_enc = nn.Parameter(w_dec.T.contiguous().to(device, dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))
        # True when the weights act on raw activations (loaded from disk), False in the trainer's
        # scaled space; see `fold_input_scale_`.
        self.raw_space = False

    # --- the interface -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(
        self, x: torch.Tensor, *, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Named loss terms + `total` (+ detached `l0`, `fired`) on a batch `x [n, d_in]`.

        `sparsity_scale` in [0, 1] is the trainer's warm-up factor on the sparsity coefficient;
        `dead` [d_sae] bool marks latents that have not fired for a while (for AuxK-style terms).
        """
        raise NotImplementedError

    # --- helpers shared by architectures ---------------------------------------------------
    def centred(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    @staticmethod
    def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Squared error summed over d_in, averaged over tokens (SAELens's `mse_loss`)."""
        return (x_hat - x.to(x_hat.dtype)).pow(2).sum(-1).mean()

    @staticmethod
    def stats(acts: torch.Tensor) -> dict[str, torch.Tensor]:
        active = (acts > 0).detach()
        return {"l0": active.sum(-1).float().mean(), "fired": active.sum(0)}

    @staticmethod
    def with_total(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms["total"] = sum(v for k, v in terms.items() if k not in STAT_KEYS)
        return terms

    # --- training-time hooks the trainer calls ---------------------------------------------
    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Drop the gradient component that would only change decoder-row norms."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Absorb `x -> scale * x` into the weights: afterwards the SAE eats unscaled inputs.

        Latent activations (and so thresholds) are unchanged; the output is divided by `scale`.
        """
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    def inference_state(self) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
        """(SAELens architecture, extra cfg fields, tensors) as SAELens's inference class wants them."""
        return self.saelens_architecture, {}, {k: v.detach() for k, v in self.state_dict().items()}

    def load_inference_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Inverse of `inference_state` (used when loading a saved SAE)."""
        self.load_state_dict(tensors)


def sparsity_kwargs(arch: str, k: float = 32, l1: float | None = None, l0: float | None = None,
                    omega: float = 0.1) -> dict[str, Any]:
    """The sparsity settings `build_sae` takes for `arch`: k for the TopK family, the L1 or L0
    coefficient (None keeps the architecture's default) otherwise, omega_0 for QF-JumpReLU."""
    if arch == "topk":
        return {"k": int(k)}
    if arch in ("batchtopk", "matryoshka"):
        return {"k": k}
    if arch in ("relu", "gated"):
        return {} if l1 is None else {"l1_coefficient": l1}
    if arch in ("jumprelu", "qf_jumprelu"):
        kw = {} if l0 is None else {"l0_coefficient": l0}
        return {**kw, "omega_0": omega} if arch == "qf_jumprelu" else kw
    raise InputError(f"unknown SAE architecture {arch!r}; choose from relu, topk, batchtopk, gated, jumprelu, "
                     "qf_jumprelu, matryoshka")


def build_sae(architecture: str, **cfg: Any) -> SAE:
    """Construct an SAE by registered name, e.g. `build_sae("topk", d_in=640, d_sae=4096, k=32)`."""
    import assay.sae.architectures  # noqa: F401  (registers every architecture)

    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise InputError(f"unknown SAE architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}") from None
    try:
        config = cls.config_class(**cfg)
    except TypeError as err:  # an option this architecture does not have
        raise InputError(f"{architecture} SAE: {err}") from None
    return cls(config)
