"""SAE metrics: sparsity, reconstruction, CE loss recovered, latent frequencies, plots."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

DENSE_FREQ = 0.1  # latents firing on more than 10% of tokens (the study's "high-frequency" latents)


@torch.no_grad()
def reconstruction_stats(sae: Any, batches: Iterable[torch.Tensor]) -> dict[str, Any]:
    """L0, MSE (per token, summed over d_in), FVU, firing frequencies over raw-activation batches."""
    n = 0
    sse = l0 = 0.0
    s1 = s2 = None
    fired = None
    for x in batches:
        x = x.to(sae.W_enc.device, sae.W_enc.dtype)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        active = acts > 0
        fired = active.sum(0).double() if fired is None else fired + active.sum(0)
        l0 += float(active.sum())
        sse += float((x_hat - x).double().pow(2).sum())
        s1 = x.double().sum(0) if s1 is None else s1 + x.double().sum(0)
        s2 = x.double().pow(2).sum() if s2 is None else s2 + x.double().pow(2).sum()
        n += len(x)
    if not n:
        raise ValueError("no activations to evaluate on")
    total_var = float(s2 - s1.pow(2).sum() / n)
    freq = (fired / n).float().cpu()
    return {
        "tokens": n,
        "l0": l0 / n,
        "mse": sse / n,
        "fvu": sse / total_var,
        "dead": int((freq == 0).sum()),
        "dense": int((freq > DENSE_FREQ).sum()),
        "max_freq": float(freq.max()),
        "freq": freq,
    }


def _replace_output(output: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Decoder blocks return a tensor or a tuple whose first item is the residual stream."""
    if isinstance(output, tuple):
        return (fn(output[0]),) + tuple(output[1:])
    return fn(output)


@contextmanager
def spliced(block: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor] | None,
            keep_first: bool = True) -> Iterator[None]:
    """Replace `block`'s output h by fn(h) (every position but the first when `keep_first`)."""
    if fn is None:
        yield
        return

    def sub(h: torch.Tensor) -> torch.Tensor:
        new = fn(h.reshape(-1, h.shape[-1])).reshape(h.shape).to(h.dtype)
        if keep_first:  # BOS: huge-norm activations that SAEs are not trained on
            new = torch.cat([h[:, :1], new[:, 1:]], dim=1)
        return new

    handle = block.register_forward_hook(lambda _m, _i, out: _replace_output(out, sub))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def next_token_loss(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> float:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    target = input_ids[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    mask = torch.ones_like(target, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
    return float((loss * mask.reshape(-1)).sum() / mask.sum())


@torch.no_grad()
def ce_recovered(lm: Any, reconstruct: Callable[[torch.Tensor], torch.Tensor], layer: int,
                 batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], keep_first: bool = True) -> dict[str, float]:
    """CE loss recovered = (L_zero - L_sae) / (L_zero - L_clean), splicing at block `layer`'s output.

    `lm` has `.model` and `.block(layer)` (assay's LoadedModel); `reconstruct` maps [n, d] -> [n, d]
    (an SAE); `batches` yields (input_ids, attention_mask) of held-out text.
    """
    block = lm.block(layer)
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n = 0
    for ids, mask in batches:
        for key, fn in (("clean", None), ("sae", reconstruct), ("zero", torch.zeros_like)):
            with spliced(block, fn, keep_first):
                totals[key] += next_token_loss(lm.model, ids, mask)
        n += 1
    ce = {f"ce_{k}": v / n for k, v in totals.items()}
    denom = ce["ce_zero"] - ce["ce_clean"]
    ce["ce_recovered"] = (ce["ce_zero"] - ce["ce_sae"]) / denom if denom else float("nan")
    return ce


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
