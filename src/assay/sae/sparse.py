"""Sparse encoder/decoder kernels for k-sparse codes (sparsify's idea, in plain PyTorch).

A TopK SAE only uses k of d_sae latents per token, so the backward pass never needs the dense
[batch, d_sae] gradient. Both functions take a code as `(vals [n, k], idx [n, k])` and compute
every gradient through compressed-sparse-row matrices:

- weight gradients `G^T @ X` are CSR x dense products (G = the k-sparse gradient);
- gradients w.r.t. the code values are sampled dense-dense products (`sampled_addmm`), i.e. only
  the n*k dot products that are needed.

Dense alternatives cost O(n * d_sae * d_in) each; these cost O(n * k * d_in).
`idx` must hold distinct latents per row (as topk returns); rows need not be sorted.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

# CSR tensors are "beta" in PyTorch; the ops used here are stable on CPU and CUDA.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

_SPARSE_DTYPES = (torch.float32, torch.float64)


def _csr_rows(idx: torch.Tensor, vals: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The [n, n_cols] CSR matrix with row i holding `vals[i]` at columns `idx[i]`."""
    n, k = idx.shape
    crow = torch.arange(0, n * k + 1, k, device=idx.device, dtype=torch.int64)
    return torch.sparse_csr_tensor(crow, idx.reshape(-1), vals.reshape(-1), (n, n_cols), check_invariants=False)


def _csr_transposed(idx: torch.Tensor, vals: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The [n_cols, n] CSR matrix G^T, where G is as in `_csr_rows` (sorted by latent)."""
    n, k = idx.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    rows = torch.arange(n, device=idx.device).repeat_interleave(k)[order]
    crow = torch.zeros(n_cols + 1, device=idx.device, dtype=torch.int64)
    crow[1:] = torch.bincount(flat, minlength=n_cols).cumsum(0)
    return torch.sparse_csr_tensor(crow, rows, vals.reshape(-1)[order], (n_cols, n), check_invariants=False)


def _up(t: torch.Tensor) -> torch.Tensor:
    # CPU sparse kernels exist for fp32/fp64 only; compute half-precision codes in fp32.
    return t if t.dtype in _SPARSE_DTYPES else t.float()


def sparse_weight_grad(idx: torch.Tensor, grad: torch.Tensor, dense: torch.Tensor, n_latents: int) -> torch.Tensor:
    """sum_i sum_j grad[i, j] * outer(e_{idx[i, j]}, dense[i])  ->  [n_latents, d]."""
    return torch.sparse.mm(_csr_transposed(idx, _up(grad), n_latents), _up(dense))


def sparse_dots(idx: torch.Tensor, left: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """out[i, j] = left[i] . rows[idx[i, j]]  ->  [n, k], without gathering [n, k, d]."""
    n, k = idx.shape
    pattern = _csr_rows(idx, torch.zeros(n * k, device=idx.device, dtype=_up(left).dtype), rows.shape[0])
    return torch.sparse.sampled_addmm(pattern, _up(left), _up(rows).t()).values().view(n, k)


class SparseEncodeAt(torch.autograd.Function):
    """pre[i, j] = (x[i] - b_dec) . W_enc[:, idx[i, j]] + b_enc[idx[i, j]] with a sparse backward.

    The forward takes the values already computed (under no_grad, by the dense matmul that had to
    run anyway to pick `idx`), so this only adds a backward. b_dec's gradient through the encoder
    is -W_enc @ grad_b_enc, so no [n, d_in] input gradient is formed unless x itself needs one.
    """

    @staticmethod
    def forward(ctx, x, b_dec, W_enc, b_enc, idx, pre_at):  # type: ignore[override]
        ctx.save_for_backward(x, b_dec, W_enc, idx)
        return pre_at.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, b_dec, W_enc, idx = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        g_x = g_bdec = g_W = g_b = None
        g_b = torch.zeros(d_sae, device=grad.device, dtype=grad.dtype).index_add_(0, idx.reshape(-1), grad.reshape(-1))
        if ctx.needs_input_grad[2]:
            x_cent = x - b_dec if b_dec is not None else x
            g_W = sparse_weight_grad(idx, grad, x_cent, d_sae).t().to(W_enc.dtype)
        if b_dec is not None and ctx.needs_input_grad[1]:
            g_bdec = -(W_enc @ g_b.to(W_enc.dtype))
        if ctx.needs_input_grad[0]:
            g_x = torch.sparse.mm(_csr_rows(idx, _up(grad), d_sae), _up(W_enc).t()).to(x.dtype)
        return g_x, g_bdec, g_W, (g_b.to(W_enc.dtype) if ctx.needs_input_grad[3] else None), None, None


class SparseDecode(torch.autograd.Function):
    """out[i] = sum_j vals[i, j] * W_dec[idx[i, j]] (no bias), with a sparse backward."""

    @staticmethod
    def forward(ctx, vals, idx, W_dec):  # type: ignore[override]
        ctx.save_for_backward(vals, idx, W_dec)
        return F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        vals, idx, W_dec = ctx.saved_tensors
        g_vals = g_W = None
        if ctx.needs_input_grad[0]:
            g_vals = sparse_dots(idx, grad_out, W_dec).to(vals.dtype)
        if ctx.needs_input_grad[2]:
            g_W = sparse_weight_grad(idx, vals, grad_out, W_dec.shape[0]).to(W_dec.dtype)
        return g_vals, None, g_W


def topk_encode(x: torch.Tensor, b_dec: torch.Tensor | None, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                search_dtype: torch.dtype | None = None, margin: int = 16):
    """TopK codes `(relu(vals) [n, k], idx [n, k], pre [n, d_sae] detached)` with a sparse backward.

    With `search_dtype` (e.g. bfloat16, several times faster than float32 where the hardware has
    it), the dense pre-activations `pre` are computed in that dtype only to shortlist k + `margin`
    candidates per token, whose pre-activations are recomputed exactly: the code and its gradients
    are the full-precision ones unless a true top-k latent falls outside the shortlist. `pre` is
    then the low-precision copy (good for ranking, e.g. AuxK's dead latents; `gather_encode`
    recomputes values exactly).
    """
    with torch.no_grad():
        x_cent = x - b_dec if b_dec is not None else x
        if search_dtype is None or search_dtype == W_enc.dtype:
            pre = torch.addmm(b_enc, x_cent, W_enc)
            vals, idx = pre.topk(k, dim=-1, sorted=False)
        else:
            pre = torch.addmm(b_enc.to(search_dtype), x_cent.to(search_dtype), W_enc.to(search_dtype))
            _, cand = pre.topk(min(k + margin, pre.shape[-1]), dim=-1, sorted=False)
            exact = sparse_dots(cand, x_cent, W_enc.t()) + b_enc[cand]
            vals, j = exact.topk(k, dim=-1, sorted=False)
            idx = cand.gather(1, j)
    vals = SparseEncodeAt.apply(x, b_dec, W_enc, b_enc, idx, vals)
    return vals.relu(), idx, pre


def gather_encode(x, b_dec, W_enc, b_enc, idx, pre):
    """Differentiable pre-activations at `idx` (e.g. AuxK's dead latents), given detached `pre`
    (recomputed exactly at `idx` when `pre` is a low-precision copy)."""
    if pre.dtype == W_enc.dtype:
        at = pre.gather(1, idx)
    else:
        with torch.no_grad():
            at = sparse_dots(idx, x - b_dec if b_dec is not None else x, W_enc.t()) + b_enc[idx]
    return SparseEncodeAt.apply(x, b_dec, W_enc, b_enc, idx, at)


class SubsetEncode(SparseEncodeAt):
    """pre[:, j] = (x - b_dec) . W_enc[:, cols[j]] + b_enc[cols[j]] for a few columns `cols` (in
    place of `idx`), given their values; the forward is `SparseEncodeAt`'s, the backward one dense
    [d_in, n] product, and, like it, forms no [n, d_in] input gradient unless x itself needs one."""

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, b_dec, W_enc, cols = ctx.saved_tensors
        g_x = g_bdec = g_W = None
        g_b = torch.zeros(W_enc.shape[1], device=grad.device, dtype=W_enc.dtype)
        g_b[cols] = grad.sum(0).to(W_enc.dtype)
        if ctx.needs_input_grad[2]:
            x_cent = x - b_dec if b_dec is not None else x
            g_W = torch.zeros_like(W_enc)
            g_W[:, cols] = (x_cent.t().to(grad.dtype) @ grad).to(W_enc.dtype)
        if b_dec is not None and ctx.needs_input_grad[1]:
            g_bdec = -(W_enc @ g_b)
        if ctx.needs_input_grad[0]:
            g_x = (grad @ W_enc[:, cols].t().to(grad.dtype)).to(x.dtype)
        return g_x, g_bdec, g_W, (g_b if ctx.needs_input_grad[3] else None), None, None


def subset_encode(x, b_dec, W_enc, b_enc, cols, pre):
    """Differentiable pre-activations `[n, len(cols)]` of the columns `cols`, given detached `pre`
    (recomputed exactly when `pre` is a low-precision copy)."""
    if pre.dtype == W_enc.dtype:
        at = pre[:, cols]
    else:
        with torch.no_grad():
            at = torch.addmm(b_enc[cols], x - b_dec if b_dec is not None else x, W_enc[:, cols])
    return SubsetEncode.apply(x, b_dec, W_enc, b_enc, cols, at)


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    return SparseDecode.apply(vals, idx, W_dec)


def densify(vals: torch.Tensor, idx: torch.Tensor, d_sae: int) -> torch.Tensor:
    return torch.zeros(*vals.shape[:-1], d_sae, device=vals.device, dtype=vals.dtype).scatter_(-1, idx, vals)
