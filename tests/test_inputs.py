"""The input assembly: what each method reads, computed by the one module every caller uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assay.activations import extract
from assay.errors import InputError
from assay.probes import METHODS, InputSpec, Inputs
from assay.sae import build_sae

from conftest import PROMPTS


def test_every_method_has_a_spec_naming_only_what_it_reads():
    for name, m in METHODS.items():
        one_vector = m.reads == "pooled" or m.reads_sae
        spec = InputSpec.for_method(name, aggregation="resp-5" if one_vector else None, layer=1, model="m", sae="s",
                                    max_tokens=7)
        assert spec.reads == m.reads
        assert spec.aggregation == ("resp-5" if one_vector else None), name
        assert (spec.sae is not None) == m.reads_sae and (spec.max_tokens is not None) == (m.reads == "tokens")
        assert (spec.layer is None) == (m.reads in ("text", "sentence-embedding"))
    assert InputSpec.for_method("attention", max_tokens=64).label == "tokens:all[-64:]"
    assert InputSpec.for_method("tfidf").label == "text" and InputSpec.for_method("lda", aggregation="all.max").label == "all.max"
    with pytest.raises(InputError, match="does not apply"):
        InputSpec.for_method("attention", aggregation="all.max")
    with pytest.raises(InputError, match="--sae"):
        InputSpec.for_method("k-sparse")
    with pytest.raises(InputError, match="unknown aggregation"):
        InputSpec.for_method("dense-logistic", aggregation="all.median")
    spec = InputSpec.for_method("k-sparse", aggregation="all.max", layer=2, sae="s")
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_inputs_read_what_the_spec_names(tiny, tmp_path):
    acts = extract(tiny, PROMPTS, [1], root=tmp_path, progress=False, aggregations=["all.max", "resp-5"])
    inputs = Inputs(acts, PROMPTS, layer=1, aggregations=["all.max", "resp-5"])
    X, m = inputs.read(InputSpec.for_method("dense-logistic", aggregation="resp-5", layer=1))
    assert m is None and torch.equal(X, acts.pooled(1, "resp-5"))
    # tokens: each prompt's last max_tokens real tokens, left-aligned, the rest masked
    X, m = inputs.read(InputSpec.for_method("attention", layer=1, max_tokens=3))
    full, fm = acts.token_batch(1, list(range(len(PROMPTS))), mask="all")
    for i in range(len(PROMPTS)):
        want = full[i][fm[i]][-3:]
        assert int(m[i].sum()) == len(want) and torch.equal(X[i][m[i]].float(), want)
    # SAE outputs against the SAE applied by hand (not against `sae_outputs`, which `read` calls):
    # resp-5 pools one token, so its latents are that token's code, its reconstruction the code
    # decoded, and its error what the decoding misses
    sae = build_sae("topk", d_in=tiny.d_model, d_sae=32, k=4).eval()
    x = acts.pooled(1, "resp-5")
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(0))  # a bias that shows if dropped
        z = sae.encode(x)
        want = {"latents": z, "reconstruction": sae.decode(z), "error": x - sae.decode(z)}
    assert (want["latents"] > 0).sum(1).eq(4).all() and want["error"].abs().max() > 0.1
    for method, output in (("1-sparse", "latents"), ("reconstruction", "reconstruction"), ("error", "error")):
        X, _ = inputs.read(InputSpec.for_method(method, aggregation="resp-5", layer=1, sae="s"), sae)
        torch.testing.assert_close(X, want[output], rtol=1e-5, atol=1e-5, msg=method)
    texts, _ = inputs.read(InputSpec.for_method("tfidf"))
    assert isinstance(texts, np.ndarray) and texts.tolist() == PROMPTS


@pytest.mark.parametrize("dtype, search", [("float32", None), ("float16", None), ("bfloat16", torch.bfloat16)])
def test_topk_codes_are_shortlisted_in_bf16_exactly_where_the_activations_are_bf16(monkeypatch, dtype, search):
    """SAE inputs are encoded the way SAEs on those activations were trained (`search_dtype_for`), read
    from the activations themselves: the study, sae-frequency's probes and `assay probe` alike."""
    import types

    import assay.probes.inputs as inputs_module
    from assay.runtime import search_dtype_for

    seen = []
    monkeypatch.setattr(inputs_module, "sae_outputs", lambda *a, search_dtype=None, **k:
                        seen.append(search_dtype) or {"latents": {"all.max": torch.zeros(2, 3)}})
    acts = types.SimpleNamespace(spec={"dtype": dtype})
    spec = InputSpec.for_method("1-sparse", aggregation="all.max", layer=1, sae="s")
    X, _ = Inputs(acts, layer=1, aggregations=["all.max"], dtype="auto").read(spec, object())
    assert seen == [search] and X.shape == (2, 3)
    assert search_dtype_for(dtype) == (None if search is None else "bfloat16")
    assert search_dtype_for(torch.bfloat16) == "bfloat16" and search_dtype_for("bf16") == "bfloat16"


def test_a_spec_reads_its_own_layer_and_a_live_batch_reads_as_the_cache(tiny, tmp_path):
    """One `Inputs` serves specs at several layers (the layer sweep, a monitor's candidates), and
    `read_live` gives a residual batch's pooled and per-token inputs exactly as the cache gives them
    (the live monitor's path)."""
    from assay.activations.extraction import pad_prompts
    from assay.activations.forward import residual_stream
    from assay.models.chat import format_prompts
    from assay.probes.inputs import read_live

    acts = extract(tiny, PROMPTS, [0, 2], root=tmp_path, progress=False, aggregations=["all.mean", "resp-5"])
    inputs = Inputs(acts, PROMPTS)  # no layer of its own
    for layer in (0, 2):
        X, _ = inputs.read(InputSpec.for_method("dense-logistic", aggregation="all.mean", layer=layer))
        assert torch.equal(X, acts.pooled(layer, "all.mean")), layer
    assert not torch.equal(inputs.read(InputSpec.for_method("dense-logistic", aggregation="all.mean", layer=0))[0],
                           inputs.read(InputSpec.for_method("dense-logistic", aggregation="all.mean", layer=2))[0])
    with pytest.raises(ValueError, match="names no layer"):
        inputs.read(InputSpec(reads="pooled", aggregation="all.mean"))

    prompts = format_prompts(tiny.tokenizer, PROMPTS)
    ids, attn, roles, _ = pad_prompts(prompts, tiny.tokenizer.pad_token_id, tiny.device)
    h = residual_stream(tiny, ids, attn, [2])[2]
    pooled = InputSpec.for_method("dense-logistic", aggregation="resp-5", layer=2)
    X, m, kept = read_live(pooled, h, roles)
    assert m is None and kept is None
    torch.testing.assert_close(X, inputs.read(pooled)[0], rtol=1e-4, atol=1e-4)
    tokens = InputSpec.for_method("attention", layer=2, max_tokens=3)
    X, m, kept = read_live(tokens, h, roles)
    Xc, mc = inputs.read(tokens)
    assert torch.equal(m, mc) and all(len(k) == int(mc[j].sum()) for j, k in enumerate(kept))
    torch.testing.assert_close(X[m].float(), Xc[mc].float(), rtol=1e-4, atol=1e-4)
    assert [k.tolist() for k in kept] == [list(range(len(p.input_ids)))[-3:] for p in prompts]
    with pytest.raises(InputError, match="not read from the model"):
        read_live(InputSpec.for_method("tfidf"), h, roles)
