"""SAE building blocks: sparse kernels against dense autograd, the JumpReLU/QF straight-through
gradients against hand-computed pseudo-derivatives, sparsity counts, input-scale folding."""

import pytest
import torch

from assay.sae.architectures.jumprelu import rectangle
from assay.sae.base import build_sae
from assay.sae.sparse import densify


def _grads(sae):
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("aux_path", ["dense over the dead columns", "sparse kernels"])
def test_topk_sparse_backward_matches_dense(aux_path, monkeypatch):
    from assay.sae.architectures import topk

    if aux_path == "sparse kernels":  # 14 dead latents, aux_k 6: the dense AuxK path unless forced off
        monkeypatch.setattr(topk, "DENSE_AUX_RATIO", 0)
    torch.manual_seed(0)
    sae = build_sae("topk", d_in=12, d_sae=40, k=5, aux_k=6, aux_k_coefficient=0.5)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(30, 12)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True
    out = sae.loss(x, dead=dead)
    out["total"].backward()
    sparse = _grads(sae)
    sae.zero_grad()

    # Dense reference: the same loss with dense tensors and plain autograd.
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(5, dim=-1)
    acts = densify(vals.relu(), idx, 40)
    x_hat = acts @ sae.W_dec + sae.b_dec
    mse = (x_hat - x).pow(2).sum(-1).mean()
    _, aidx = pre.detach().masked_fill(~dead, float("-inf")).topk(6, dim=-1)
    aux_acts = densify(pre.gather(1, aidx).relu(), aidx, 40)
    aux = 0.5 * min(int(dead.sum()) / 6, 1.0) * (aux_acts @ sae.W_dec - (x - x_hat).detach()).pow(2).sum(-1).mean()
    (mse + aux).backward()
    assert torch.allclose(out["mse"], mse) and torch.allclose(out["auxk"], aux)
    for name, g in _grads(sae).items():
        assert torch.allclose(sparse[name], g, atol=1e-5), name


def test_topk_has_exactly_k_active():
    sae = build_sae("topk", d_in=16, d_sae=64, k=7)
    acts = sae.encode(torch.randn(50, 16))
    assert ((acts > 0).sum(-1) == 7).all()
    assert sae.loss(torch.randn(50, 16))["l0"] == 7


def test_batchtopk_has_k_on_average():
    sae = build_sae("batchtopk", d_in=16, d_sae=64, k=7)
    out = sae.loss(torch.randn(50, 16))
    assert float(out["l0"]) == pytest.approx(7.0)
    assert float(sae.threshold) > 0  # the running threshold moved off zero


def _hand_threshold_grad(sae, x, penalty):
    """Pseudo-derivative of (MSE + penalty) w.r.t. theta, written out from the STE definitions."""
    eps, theta = sae.cfg.bandwidth, sae.threshold.detach()
    z = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach()
    acts = z * (z > theta)
    x_hat = acts @ sae.W_dec.detach() + sae.b_dec.detach()
    g_acts = 2 * (x_hat - x) @ sae.W_dec.detach().T / len(x)  # d MSE / d acts
    kernel = rectangle((z - theta) / eps)
    recon = (-(theta / eps) * kernel * g_acts).sum(0)
    d_freq = (-(1 / eps) * kernel).mean(0)  # d f_i / d theta_i
    lam = sae.cfg.l0_coefficient
    if penalty == "l0":
        return recon + lam * d_freq
    freq = (z > theta).float().mean(0)
    return recon + lam * (1 + 2 * freq / sae.cfg.omega_0) * d_freq


@pytest.mark.parametrize("arch,penalty", [("jumprelu", "l0"), ("qf_jumprelu", "qf")])
def test_threshold_gradient_is_the_ste_pseudo_derivative(arch, penalty):
    torch.manual_seed(1)
    sae = build_sae(arch, d_in=8, d_sae=24, bandwidth=0.5, l0_coefficient=0.3)
    x = torch.randn(64, 8)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.6)  # many pre-activations fall inside the kernel's window
    sae.loss(x)["total"].backward()
    expected = _hand_threshold_grad(sae, x, penalty)
    assert expected.abs().sum() > 0
    assert torch.allclose(sae.threshold.grad, expected, atol=1e-5)


def test_qf_penalty_reduces_to_l0_when_omega_is_large():
    torch.manual_seed(2)
    x = torch.randn(32, 8)
    jr = build_sae("jumprelu", d_in=8, d_sae=24)
    qf = build_sae("qf_jumprelu", d_in=8, d_sae=24, omega_0=1e12)
    assert torch.allclose(jr.loss(x)["l0_penalty"], qf.loss(x)["qf_penalty"])


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_folding_the_input_scale_keeps_the_function(arch):
    torch.manual_seed(3)
    sae = build_sae(arch, d_in=8, d_sae=24, **({"k": 3} if "topk" in arch else {})).eval()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(16, 8) * 7.0
    scale = 1 / 7.0
    want = sae(x * scale) / scale
    sae.fold_input_scale_(scale)
    assert torch.allclose(sae(x), want, atol=1e-4)


def test_subset_encode_recomputes_from_a_low_precision_pre():
    """With a bf16 shortlist `pre`, AuxK's dead columns are recomputed in full precision: the same
    values and gradients as from the float32 `pre`."""
    from assay.sae.sparse import subset_encode

    torch.manual_seed(0)
    x, b_dec = torch.randn(16, 8), torch.randn(8, requires_grad=True)
    W_enc, b_enc = torch.randn(8, 24, requires_grad=True), torch.randn(24, requires_grad=True)
    cols = torch.tensor([1, 5, 6, 20])
    pre = ((x - b_dec) @ W_enc + b_enc).detach()
    results = []
    for p in (pre, pre.bfloat16()):
        out = subset_encode(x, b_dec, W_enc, b_enc, cols, p)
        out.pow(2).sum().backward()
        results.append((out.detach(), b_dec.grad.clone(), W_enc.grad.clone(), b_enc.grad.clone()))
        for t in (b_dec, W_enc, b_enc):
            t.grad = None
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert results[0][2][:, [0, 2, 3]].abs().sum() == 0 and results[0][2][:, 1].abs().sum() > 0
