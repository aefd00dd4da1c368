"""The sae-frequency sweep's held-out evaluation: per SAE L0 (against its target), FVU, dead and
dense latents, firing frequencies and delta LM loss, cached beside the sweep."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from assay.errors import InputError
from assay.experiment.sae_frequency_match import BLOCK_TOKENS
from assay.experiment.sae_frequency_train import TOLERANCE, FrequencyConfig, sweep
from assay.fileio import read_json, sha256_json, write_json

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_sweep(lm: Any, layer: int, cfg: FrequencyConfig, root: Path, names: dict[str, Path],
                   progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict[str, Any]]:
    """Per SAE on held-out documents of the training corpus: L0, FVU, dead/dense latents, frequencies, delta LM loss; and
    the firing counts per block of held-out tokens that the matched-L0 comparison resamples
    (`{"fired": {sae: [n_blocks, d_sae]}, "block_tokens": [n_blocks]}`). Cached beside the sweep,
    keyed by the evaluation settings and the code that computes them."""
    from assay.activations import extract
    from assay.provenance import code_fingerprint
    from assay.sae.corpus import held_out_texts, training_texts
    from assay.sae.io import load_sae
    from assay.sae.metrics import DENSE_FREQ, text_batches
    from assay.sae.recipe import evaluate_saes, outlier_dims_of

    key = sha256_json([cfg.eval_tokens, cfg.ce_texts, cfg.ce_max_tokens, cfg.max_tokens, cfg.seed,
                       code_fingerprint(*EVAL_CODE)])[:10]
    cache, freq_file = root / f"frequency-eval-{key}.json", root / f"frequency-eval-{key}.pt"
    blocks_file = root / f"frequency-blocks-{key}.pt"
    if cache.exists() and freq_file.exists() and blocks_file.exists():
        return (read_json(cache)["rows"], torch.load(freq_file, weights_only=True),
                torch.load(blocks_file, weights_only=True))
    train = set(training_texts(cfg.corpus, lm, cfg.train_tokens, cfg.max_tokens, cfg.seed))
    held = held_out_texts(cfg.corpus, lm, cfg.eval_tokens, cfg.max_tokens, seed=cfg.seed)
    ce_src = held_out_texts(cfg.corpus, lm, cfg.ce_texts * (cfg.ce_max_tokens + 1), cfg.ce_max_tokens,
                            seed=cfg.seed, skip=len(held))[: cfg.ce_texts]
    overlap = len(train & (set(held) | set(ce_src)))
    if overlap:
        raise InputError(f"{overlap} held-out documents are also training documents: the {cfg.corpus} corpus is too "
                         "small for these token budgets; lower --tokens")
    acts = extract(lm, held, [layer], dataset_fingerprint=sha256_json([f"{cfg.corpus}-held-out", held]),
                   aggregations=("all.mean",), store_tokens=True, chat=False, max_tokens=cfg.max_tokens,
                   progress=progress)
    tokens = [c.to(lm.device) for c in acts.iter_tokens(layer, 8192, mask="all")]
    outliers = outlier_dims_of(tokens)  # FVU also without them, as the study's SAE quality reports it
    saes = {name: load_sae(names[name], device=str(lm.device)).eval() for name, _, _ in sweep(cfg)}
    log.info("LM loss with %d reconstructions spliced in, on %d held-out documents", len(saes), len(ce_src))
    records = evaluate_saes(saes, tokens, outlier_dims=outliers, lm=lm, layer=layer, seed=cfg.seed,
                            ce_batches=list(text_batches(lm.tokenizer, ce_src, cfg.ce_max_tokens, 8, lm.device)))
    controls = read_json(root / "l0_control.json")
    rows, freqs, fired = [], {}, {}
    for (name, v, target) in sweep(cfg):
        stats = records[name]
        freqs[name] = stats.pop("freq")
        fired[name] = block_firing(saes[name], tokens)
        l0 = stats["l0"]
        control = controls.get(name, {})
        rows.append({  # `architecture` and `d_sae` here hold their place in the row; `stats` has them too
            "sae": name, "variant": v.name, "label": v.label, "architecture": v.arch, "omega_0": v.omega_0,
            "target_l0": target, "l0_relative_error": l0 / target - 1, "l0_matched": abs(l0 / target - 1) <= TOLERANCE,
            "coefficient_name": {"gated": "l1_coefficient", "topk": "k"}.get(v.arch, "l0_coefficient"),
            "coefficient": control.get("coefficient", target if v.arch == "topk" else None),
            "initial_coefficient": control.get("initial_coefficient"),
            "dense_share": stats["dense"] / cfg.width, "dense_freq": DENSE_FREQ, "d_sae": cfg.width,
            "path": str(names[name]), "outlier_dims": outliers, **stats})
    n = sum(len(t) for t in tokens)
    blocks = {"fired": fired, "block_tokens": torch.tensor([min(BLOCK_TOKENS, n - s) for s in range(0, n, BLOCK_TOKENS)])}
    write_json(cache, {"rows": rows})
    with_atomic_torch_save(freqs, freq_file)
    with_atomic_torch_save(blocks, blocks_file)
    return rows, freqs, blocks


@torch.no_grad()
def block_firing(sae: Any, tokens: list[torch.Tensor]) -> torch.Tensor:
    """How often each latent fires in each block of `BLOCK_TOKENS` consecutive held-out tokens
    `[n_blocks, d_sae]` (the unit the matched-L0 comparison resamples)."""
    x = torch.cat(tokens)
    block = torch.arange(len(x), device=x.device) // BLOCK_TOKENS
    out = torch.zeros(int(block[-1]) + 1, sae.cfg.d_sae, dtype=torch.int32)
    for start in range(0, len(x), 8192):
        active = (sae.encode(x[start:start + 8192]) > 0).to(torch.int32).cpu()
        out.index_add_(0, block[start:start + 8192].cpu(), active)
    return out


# The code whose numbers the cache holds (the SAEs' own code keys the sweep's directory): an edit to
# any of it measures again, so a report never shows numbers an older version computed.
EVAL_CODE = ("assay.experiment.sae_frequency_eval", "assay.experiment.sae_frequency_match", "assay.sae.metrics",
             "assay.sae.recipe")


def with_atomic_torch_save(obj: Any, path: Path) -> None:
    from assay.fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
