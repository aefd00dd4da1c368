"""SAE metrics: sparsity, reconstruction, CE loss recovered, latent frequencies, plots."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

DENSE_FREQ = 0.1  # latents firing on more than 10% of tokens (the study's "high-frequency" latents)


@torch.no_grad()
def reconstruction_stats(sae: Any, batches: Iterable[torch.Tensor],
                         outlier_dims: Sequence[int] | torch.Tensor | None = None) -> dict[str, Any]:
    """L0, MSE (per token, summed over d_in), FVU, firing frequencies over raw-activation batches.

    With `outlier_dims` (e.g. the few massive-activation dimensions of a residual stream, which can
    hold most of its variance), also `fvu_outlier_dims` and `fvu_other_dims`: FVU over those
    dimensions and over the rest, since an FVU dominated by a few huge dimensions says little
    about the error where the model reads most of its information.
    """
    n = 0
    l0 = 0.0
    sse = s1 = s2 = fired = None
    for x in batches:
        x = x.to(sae.W_enc.device, sae.W_enc.dtype)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        active = acts > 0
        fired = active.sum(0).double() if fired is None else fired + active.sum(0)
        l0 += float(active.sum())
        err = (x_hat - x).double().pow(2).sum(0)
        sse = err if sse is None else sse + err
        s1 = x.double().sum(0) if s1 is None else s1 + x.double().sum(0)
        s2 = x.double().pow(2).sum(0) if s2 is None else s2 + x.double().pow(2).sum(0)
        n += len(x)
    if not n:
        raise ValueError("no activations to evaluate on")
    var = s2 - s1.pow(2) / n  # per dimension, times n
    freq = (fired / n).float().cpu()
    out = {
        "tokens": n,
        "l0": l0 / n,
        "mse": float(sse.sum()) / n,
        "fvu": float(sse.sum() / var.sum()),
        "dead": int((freq == 0).sum()),
        "dense": int((freq > DENSE_FREQ).sum()),
        "max_freq": float(freq.max()),
        "freq": freq,
    }
    if outlier_dims is not None:
        mask = torch.zeros(len(var), dtype=torch.bool, device=var.device)
        mask[torch.as_tensor(outlier_dims, device=var.device)] = True
        out["fvu_outlier_dims"] = float(sse[mask].sum() / var[mask].sum())
        out["fvu_other_dims"] = float(sse[~mask].sum() / var[~mask].sum())
        out["outlier_variance_share"] = float(var[mask].sum() / var.sum())
    return out


def _replace_output(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Decoder blocks return a tensor or a tuple whose first item is the residual stream."""
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    return fn(output)


def splice_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose residual stream an SAE replaces: every real token but each row's first.

    The first real token is BOS, whose attention-sink activations (~100x the norm of the rest) no
    SAE here is trained on. It is found per row, so left padding (Gemma's tokenizer pads on the
    left) keeps BOS rather than a pad.
    """
    real = attention_mask.bool()
    first = real.long().argmax(1)
    keep = real.clone()
    keep[torch.arange(len(real), device=real.device), first] = False
    return keep


@contextmanager
def spliced(block: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor] | None,
            replace: torch.Tensor | None = None) -> Iterator[None]:
    """Replace `block`'s output h by fn(h) at the positions where `replace [b, T]` is true
    (every position when None)."""
    if fn is None:
        yield
        return

    def sub(h: torch.Tensor) -> torch.Tensor:
        new = fn(h.reshape(-1, h.shape[-1])).reshape(h.shape).to(h.dtype)
        return new if replace is None else torch.where(replace.unsqueeze(-1), new, h)

    handle = block.register_forward_hook(lambda _m, _i, out: _replace_output(out, sub))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def token_losses(model: torch.nn.Module, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token losses `[b, T-1]` (float64) and which count: both the context token and the
    target are real (so under left padding no loss is scored for predicting BOS from a pad)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    target = input_ids[:, 1:]
    # One document at a time in float32: a whole batch's float32 logits at Gemma's 262k vocabulary
    # is 1 GiB per 8 x 128 tokens (on top of the model-dtype logits), which, repeated over every
    # spliced reconstruction, took the SAE-quality stage to the edge of a 24 GiB machine. Rows of
    # contiguous [tokens, vocab]: cross_entropy over a transposed [b, vocab, T] view takes a strided
    # path about 3x slower, and less accurate: on 16 held-out Wikipedia documents (Gemma 3 270M, bf16
    # logits) its per-token losses were up to 8.5e-4 nats from a float64 computation, these up to 6e-5.
    loss = torch.empty(target.shape, dtype=torch.float64, device=target.device)
    for row in range(len(target)):
        loss[row] = torch.nn.functional.cross_entropy(logits[row].float(), target[row], reduction="none")
    if attention_mask is None:
        return loss, torch.ones_like(target, dtype=torch.bool)
    real = attention_mask.bool()
    return loss, real[:, 1:] & real[:, :-1]


def next_token_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> float:
    """Mean next-token loss over the real tokens of a batch."""
    loss, valid = token_losses(model, input_ids, attention_mask)
    return float((loss * valid).sum() / valid.sum())


@torch.no_grad()
def ce_recovered(lm: Any, reconstruct: Callable[[torch.Tensor], torch.Tensor] | dict[str, Callable],
                 layer: int, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
                 n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Delta LM loss and CE loss recovered of one or several reconstructions spliced in at the
    output of block `layer`, on held-out text, with their spread over documents.

    - `delta_lm_loss` = L_sae - L_clean (nats per token).
    - `ce_recovered` = (L_zero - L_sae) / (L_zero - L_clean), against **zero ablation** of the
      residual stream at the spliced positions (BOS kept).
    Losses are token-weighted means over every scored token of every document. Intervals are
    percentile bootstraps over documents (the unit that varies), 95%. `reconstruct` is an SAE /
    function `[n, d] -> [n, d]`, or a dict of them (then a dict of results comes back; the clean
    and zero passes are shared). `batches` yields `(input_ids, attention_mask)`; each row is one
    document.
    """
    fns = reconstruct if isinstance(reconstruct, dict) else {"sae": reconstruct}
    block = lm.block(layer)
    runs = {"clean": None, "zero": torch.zeros_like, **{f"sae:{k}": f for k, f in fns.items()}}
    doc_loss: dict[str, list[torch.Tensor]] = {k: [] for k in runs}
    doc_tokens: list[torch.Tensor] = []
    for ids, mask in batches:
        replace = splice_mask(mask if mask is not None else torch.ones_like(ids))
        for key, fn in runs.items():
            with spliced(block, fn, replace):
                loss, valid = token_losses(lm.model, ids, mask)
            doc_loss[key].append((loss * valid).sum(1).cpu())
        doc_tokens.append(valid.sum(1).cpu().double())
    if not doc_tokens:
        raise ValueError("no held-out text to measure the LM loss on")
    tok = torch.cat(doc_tokens).numpy()
    sums = {k: torch.cat(v).numpy() for k, v in doc_loss.items()}
    out = {k.removeprefix("sae:"): _ce_summary(sums[k], sums["clean"], sums["zero"], tok, n_boot, seed)
           for k in runs if k.startswith("sae:")}
    return out if isinstance(reconstruct, dict) else out["sae"]


class HeldOutLMLoss:
    """Delta LM loss (nats per scored token) of reconstructions spliced in at the output of block
    `layer` on a fixed set of held-out batches, with the clean pass run once: the cheap form of
    `ce_recovered` that a training curve calls at every point."""

    def __init__(self, lm: Any, layer: int, batches: Sequence[tuple[torch.Tensor, torch.Tensor | None]]):
        self.lm, self.layer, self.batches = lm, layer, list(batches)
        self.clean = self._total(None)

    @torch.no_grad()
    def _total(self, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[float, float]:
        loss_sum = count = 0.0
        for ids, mask in self.batches:
            replace = splice_mask(mask if mask is not None else torch.ones_like(ids))
            with spliced(self.lm.block(self.layer), fn, replace):
                loss, valid = token_losses(self.lm.model, ids, mask)
            loss_sum += float((loss * valid).sum())
            count += float(valid.sum())
        return loss_sum, count

    def delta(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        loss_sum, count = self._total(fn)
        return loss_sum / count - self.clean[0] / self.clean[1]


def _ce_summary(sae: Any, clean: Any, zero: Any, tokens: Any, n_boot: int, seed: int) -> dict[str, Any]:
    import numpy as np

    def stats(idx: Any) -> tuple[Any, Any, Any]:
        n = tokens[idx].sum(-1)
        l_sae, l_clean, l_zero = (a[idx].sum(-1) / n for a in (sae, clean, zero))
        return l_sae - l_clean, (l_zero - l_sae) / (l_zero - l_clean), (l_sae, l_clean, l_zero)

    all_docs = np.arange(len(tokens))
    delta, rec, (l_sae, l_clean, l_zero) = stats(all_docs)
    boot = np.random.default_rng(seed).integers(0, len(tokens), size=(n_boot, len(tokens)))
    b_delta, b_rec, _ = stats(boot)
    per_doc = (sae - clean) / np.maximum(tokens, 1)
    return {
        "ce_clean": float(l_clean), "ce_sae": float(l_sae), "ce_zero": float(l_zero),
        "delta_lm_loss": float(delta), "delta_lm_loss_ci": [float(v) for v in np.quantile(b_delta, [0.025, 0.975])],
        "delta_lm_loss_doc_sd": float(per_doc.std(ddof=1)) if len(per_doc) > 1 else 0.0,
        "ce_recovered": float(rec), "ce_recovered_ci": [float(v) for v in np.quantile(b_rec, [0.025, 0.975])],
        "ce_ablation": "zero", "ce_texts": int(len(tokens)), "ce_tokens": int(tokens.sum()),
    }


def text_batches(tokenizer: Any, texts: Sequence[str], max_tokens: int = 128, batch_size: int = 8,
                 device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                        truncation=True, max_length=max_tokens)
        yield enc["input_ids"].to(device), enc["attention_mask"].to(device)


def plot_frequency_histogram(freq: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Histogram of log10 firing frequency (dead latents counted in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alive = freq[freq > 0].double().log10().numpy()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(alive, bins=50)
    ax.axvline(-1, color="r", ls="--", lw=1, label="10% of tokens")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title(f"{title} ({int((freq == 0).sum())} dead)".strip())
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_sweep(points: Sequence[dict[str, Any]], path: str | Path, y: str = "fvu") -> Path:
    """Reconstruction (`y`) against L0, one series per architecture: points = [{arch, l0, fvu,...}]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for arch in sorted({p["arch"] for p in points}):
        pts = sorted((p["l0"], p[y]) for p in points if p["arch"] == arch)
        ax.plot([a for a, _ in pts], [b for _, b in pts], "o-", label=arch)
    ax.set_xscale("log")
    ax.set_xlabel("L0")
    ax.set_ylabel(y)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
