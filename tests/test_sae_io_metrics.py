"""SAELens-format files (round trip, SAELens-written layouts) and CE loss recovered."""

import json

import pytest
import torch
from safetensors.torch import save_file

from assay.sae.base import build_sae
from assay.sae.io import load_sae, save_sae
from assay.sae.metrics import ce_recovered, reconstruction_stats

ARCHS = {"relu": {}, "topk": {"k": 4}, "batchtopk": {"k": 4}, "matryoshka": {"k": 4}, "jumprelu": {},
         "qf_jumprelu": {}, "gated": {}}
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "matryoshka": "jumprelu",
                "jumprelu": "jumprelu", "qf_jumprelu": "jumprelu", "gated": "gated"}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    sae = build_sae(arch, d_in=16, d_sae=64, **ARCHS[arch]).eval()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.02 * torch.randn_like(p))
        if arch in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.05)
    save_sae(sae, tmp_path, metadata={"hook_name": "blocks.9.hook_resid_post", "model_name": "m"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_ARCH[arch]
    for key in ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations", "metadata"):
        assert key in cfg
    assert cfg["metadata"]["hook_name"] == "blocks.9.hook_resid_post"
    x = torch.randn(20, 16)
    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae)
    assert torch.allclose(loaded(x), sae(x), atol=1e-6)


def test_loads_saelens_layouts(tmp_path):
    """Files as SAELens writes them: a pre-6.0 flat JumpReLU with log_threshold, and a v6 TopK
    trained with rescale_acts_by_decoder_norm (decoder norms folded in on load)."""
    torch.manual_seed(1)
    d, m = 8, 32
    W_enc, W_dec = torch.randn(d, m), torch.randn(m, d)
    b_enc, b_dec, thr = torch.randn(m) * 0.1, torch.randn(d), torch.rand(m) * 0.5
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "log_threshold": thr.log()},
              str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": d, "d_sae": m, "dtype": "float32", "hook_name": "blocks.3.hook_resid_post",
        "model_name": "gpt2", "apply_b_dec_to_input": True, "normalize_activations": "none"}))
    x = torch.randn(10, d)
    pre = (x - b_dec) @ W_enc + b_enc
    want = (pre * (pre > thr)) @ W_dec + b_dec
    sae = load_sae(tmp_path)
    assert sae.metadata["hook_name"] == "blocks.3.hook_resid_post"
    assert torch.allclose(sae(x), want, atol=1e-5)

    topk = tmp_path / "topk"
    topk.mkdir()
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, str(topk / "sae_weights.safetensors"))
    (topk / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": d, "d_sae": m, "k": 3, "rescale_acts_by_decoder_norm": True, "dtype": "float32",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "metadata": {"sae_lens_version": "6.5.0"}}))
    norm = W_dec.norm(dim=1)
    pre = ((x - b_dec) @ W_enc + b_enc) * norm
    vals, idx = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter(1, idx, vals.relu())
    want = (acts / norm) @ W_dec + b_dec
    assert torch.allclose(load_sae(topk)(x), want, atol=1e-5)


class _TinyLM:
    """Just what `ce_recovered` needs from assay's LoadedModel: `.model` and `.block(layer)`."""

    def __init__(self):
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        torch.manual_seed(0)
        cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                               sliding_window=16)
        self.model = Gemma3ForCausalLM(cfg).eval()

    def block(self, layer):
        return self.model.model.layers[layer]


def test_ce_recovered_is_one_for_perfect_and_zero_for_zero_ablation():
    lm = _TinyLM()
    ids = torch.randint(1, 64, (3, 12))
    batches = [(ids, torch.ones_like(ids))]
    perfect = ce_recovered(lm, lambda h: h.clone(), 0, batches)
    assert perfect["ce_recovered"] == pytest.approx(1.0)
    assert perfect["ce_zero"] != pytest.approx(perfect["ce_clean"])
    assert ce_recovered(lm, torch.zeros_like, 0, batches)["ce_recovered"] == pytest.approx(0.0)
    half = ce_recovered(lm, lambda h: 0.5 * h, 0, batches)
    assert half["ce_recovered"] == pytest.approx((half["ce_zero"] - half["ce_sae"]) / (half["ce_zero"] - half["ce_clean"]))


@pytest.mark.parametrize("side", ["left", "right"])
def test_ce_splice_keeps_each_rows_first_real_token_under_padding(side):
    """Padded batches give the numbers each document gives alone: the first *real* token (BOS) is
    kept as is, and no loss is scored for predicting a real token from a pad."""
    lm = _TinyLM()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 64, (n,), generator=gen) for n in (12, 7, 4)]
    perturb = lambda h: 0.5 * h + 0.1  # noqa: E731

    def batch(rows):
        T = max(len(r) for r in rows)
        ids, mask = torch.zeros(len(rows), T, dtype=torch.long), torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
            ids[i, sl], mask[i, sl] = r, 1
        return ids, mask

    alone = [ce_recovered(lm, perturb, 0, [batch([d])], n_boot=10) for d in docs]
    together = ce_recovered(lm, perturb, 0, [batch(docs)], n_boot=10)
    n = torch.tensor([len(d) - 1 for d in docs], dtype=torch.float64)
    for key in ("ce_clean", "ce_sae", "ce_zero"):
        want = float(sum(a[key] * k for a, k in zip(alone, n)) / n.sum())
        assert together[key] == pytest.approx(want, rel=1e-4), key
    assert together["ce_tokens"] == int(n.sum()) and together["ce_texts"] == 3


def test_reconstruction_stats_counts():
    sae = build_sae("topk", d_in=8, d_sae=32, k=2).eval()
    stats = reconstruction_stats(sae, [torch.randn(100, 8), torch.randn(50, 8)])
    assert stats["tokens"] == 150 and stats["l0"] == pytest.approx(2.0)
    assert stats["dead"] == int((stats["freq"] == 0).sum()) and 0 < stats["fvu"]


def _edit_cfg(path, change):
    import json

    cfg = json.loads((path / "cfg.json").read_text())
    change(cfg)
    (path / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("what,change,match", [
    ("arch", lambda c: c.update(architecture="topk"), "disagrees with its assay metadata"),
    ("assay-arch", lambda c: c["metadata"]["assay"].update(architecture="topk"), "malformed SAE config"),
    ("gated-on-jumprelu-weights", lambda c: c.update(architecture="gated") or c["metadata"].pop("assay"),
     "does not describe these weights|not supported"),
    ("width", lambda c: c["metadata"]["assay"]["config"].update(d_sae=64), "d_sae 32 disagrees|should be"),
    ("d_in", lambda c: c.update(d_in=8), "d_in 8 disagrees"),
    ("layer", lambda c: c["metadata"].update(assay_layer=3), "names layer 3"),
    ("not-json", None, "not valid JSON"),
])
def test_sae_cfg_that_disagrees_with_its_weights_is_refused(tmp_path, what, change, match):
    """An edited cfg.json gave a different SAE (or a mislabelled one) with exit 0; now it is refused."""
    from assay.errors import ConfigMismatchError
    from assay.sae.base import build_sae
    from assay.sae.io import load_sae, save_sae

    save_sae(build_sae("jumprelu", d_in=16, d_sae=32), tmp_path, metadata={"assay_layer": 2,
                                                                          "hook_name": "blocks.2.hook_resid_post"})
    load_sae(tmp_path)
    if change is None:
        (tmp_path / "cfg.json").write_text("{oops")
    else:
        _edit_cfg(tmp_path, change)
    with pytest.raises(ConfigMismatchError, match=match):
        load_sae(tmp_path)


@pytest.mark.parametrize("what", ["nan-weights", "metadata-list", "layer-string", "cfg-list"])
def test_sae_file_damage_is_refused_clearly(tmp_path, what):
    """NaN weights loaded and gave NaN latents with exit 0; garbled metadata crashed with a bare
    ValueError (reported as a bug)."""
    from safetensors.torch import load_file, save_file

    from assay.errors import ConfigMismatchError
    from assay.sae.base import build_sae
    from assay.sae.io import load_sae, save_sae

    save_sae(build_sae("topk", d_in=16, d_sae=32, k=4), tmp_path, metadata={"assay_layer": 2})
    if what == "nan-weights":
        t = load_file(tmp_path / "sae_weights.safetensors")
        t["W_enc"][0, 0] = float("nan")
        save_file(t, tmp_path / "sae_weights.safetensors")
    elif what == "metadata-list":
        _edit_cfg(tmp_path, lambda c: c.update(metadata=[1, 2]))
    elif what == "layer-string":
        _edit_cfg(tmp_path, lambda c: c["metadata"].update(assay_layer="two"))
    else:
        (tmp_path / "cfg.json").write_text("[1]")
    with pytest.raises(ConfigMismatchError, match="NaN|not a JSON object|not a layer number"):
        load_sae(tmp_path)
