"""The study's SAEs and their quality.

Four SAEs per seed, all of one architecture and width:
- `pretrain`: trained on the pretraining mix (Wikipedia lead sections and GCIDE dictionary entries,
  half each: `assay.sae.corpus`);
- `chat`: trained from scratch on ShareGPT conversations;
- `pretrain+chat-ft`: `pretrain` finetuned on chat tokens;
- `pretrain+pretrain-ft`: `pretrain` trained on as many more fresh *pretraining* tokens: the
  equal-steps control, so that "finetuning on chat helps" is not "more training helps".
Chat corpora leave out every conversation containing one of the benchmark's prompts. Seeds
change an SAE's initialisation and its token order, not its text. Each SAE lives in
`cache_dir()/sae/<name>-L<layer>-s<seed>-<key>/`, the key hashing everything that changes its
weights (the training code included), so a rerun reuses it and an interrupted training resumes.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from assay.experiment.config import StudyConfig, StudySAE, by_name, study_saes_for
from assay.fileio import sha256_json, write_json
from assay.runtime import cache_dir

if TYPE_CHECKING:  # torch-free at import: the commands that import this may never train
    import torch

    from assay.models.loading import LoadedModel

log = logging.getLogger(__name__)

SAE_CODE = ("assay.sae.base", "assay.sae.trainer", "assay.sae.buffer", "assay.sae.sparse", "assay.sae.architectures",
            "assay.sae.corpus", "assay.sae.io", "assay.sae.resample", "assay.sae.recipe", "assay.experiment.saes")


class Corpora:
    """The SAE training texts: `pretrain` holds the pretraining SAE's texts followed by the control's
    fresh ones; `chat` the chat SAE's texts, whose first documents also serve the finetune. Chosen
    (tokenised, not run) on construction; each corpus is extracted once, on first use, so a run
    whose SAEs all exist already (`assay experiment saes` ran first) never extracts them."""

    def __init__(self, lm: LoadedModel, cfg: StudyConfig, exclude: frozenset[str], progress: bool):
        from assay.sae.corpus import training_texts

        spec, self.lm, self.cfg, self.progress = cfg.sae, lm, cfg, progress
        self.exclude = exclude
        pre = training_texts("pretrain", lm, spec.pretrain_tokens, spec.max_tokens, cfg.seed)
        pre_all = (training_texts("pretrain", lm, spec.pretrain_tokens + spec.finetune_tokens, spec.max_tokens,
                                  cfg.seed) if spec.control else pre)
        chat = training_texts("chat", lm, spec.chat_tokens, spec.max_tokens, cfg.seed, exclude)
        chat_ft = training_texts("chat", lm, spec.finetune_tokens, spec.max_tokens, cfg.seed, exclude)
        assert pre_all[: len(pre)] == pre and chat[: len(chat_ft)] == chat_ft  # prefixes of one order
        self.texts: dict[str, list[str]] = {"pretrain": pre_all, "chat": chat}
        self.ranges: dict[str, range] = {"pretrain": range(len(pre)), "pretrain+pretrain-ft": range(len(pre), len(pre_all)),
                                         "chat": range(len(chat)), "pretrain+chat-ft": range(len(chat_ft))}
        self._acts: dict[str, object] = {}

    def activations(self, corpus: str):
        """The corpus's token activations at the study's layer (extracted into the cache on first use)."""
        if corpus not in self._acts:
            from assay.activations import extract_on_all_ranks

            t = self.texts[corpus]
            self._acts[corpus] = extract_on_all_ranks(
                self.lm, t, [self.cfg.layer], dataset_fingerprint=sha256_json([corpus, t]), aggregations=("all.mean",),
                store_tokens=True, chat=False, max_tokens=self.cfg.sae.max_tokens, progress=self.progress,
                reuse=False)  # a training stream: the same order whatever the cache held
        return self._acts[corpus]

    def stream(self, sae: StudySAE, seed: int) -> Iterator[torch.Tensor]:
        """Token activations for `sae`, `epochs` passes, each in a new order seeded by `seed` (under
        torch.distributed, this rank's share)."""
        from assay.distributed import my_part

        acts = self.activations(sae.corpus)
        idx = list(self.ranges[sae.name])
        return itertools.chain.from_iterable(
            acts.iter_tokens(self.cfg.layer, 8192, mask="all", shuffle_seed=1000 * seed + epoch, indices=idx,
                             part=my_part())
            for epoch in range(self.cfg.sae.epochs))

    def fingerprint(self) -> str:
        return sha256_json({c: sha256_json(t) for c, t in self.texts.items()})


def sae_key(lm: LoadedModel, cfg: StudyConfig, sae: StudySAE, seed: int, corpora_fp: str) -> str:
    """Everything that changes an SAE's weights: its activations' extraction version among them, so
    an SAE trained on activations extraction now computes differently is trained again."""
    from assay.activations.extraction import EXTRACTION_VERSION
    from assay.provenance import code_fingerprint

    spec = cfg.sae.model_dump(exclude={"eval_texts", "eval_max_tokens", "control", "curve_points"})
    parent = sae_key(lm, cfg, by_name(sae.parent), seed, corpora_fp) if sae.parent else None
    return sha256_json({"model": lm.fingerprint, "layer": cfg.layer, "seed": seed, "name": sae.name, "sae": spec,
                        "corpora": corpora_fp, "parent": parent, "code": code_fingerprint(*SAE_CODE),
                        "extraction": EXTRACTION_VERSION})[:16]


def train_study_saes(lm: LoadedModel, cfg: StudyConfig, exclude: frozenset[str], progress: bool = True,
                     val_tokens: list[torch.Tensor] | None = None) -> dict[tuple[str, int], Path]:
    """Train (or reuse) every study SAE for every seed; returns (name, seed) -> directory.

    With `val_tokens` (the benchmark's validation tokens), each SAE trained here records a held-out
    curve in its `training.json`: L0, FVU and dense latents on those tokens at `spec.curve_points`
    points of training, and, for the first seed, delta LM loss on the held-out documents that
    `sae_quality` measures it on (so a curve's last point is the SAE's quality record)."""
    from assay.distributed import is_main
    from assay.sae.base import sparsity_kwargs
    from assay.sae.recipe import initial_saes, sae_metadata, train_config, train_saes
    from assay.experiment.sae_quality import curve_evaluator, held_out_lm_loss
    from assay.provenance import git_commit

    spec = cfg.sae
    corpora = Corpora(lm, cfg, exclude, progress)
    fp = corpora.fingerprint()
    lm_losses: dict[str, Any] = {}  # per corpus: the clean pass over its held-out documents, run once
    out: dict[tuple[str, int], Path] = {}
    for seed in cfg.seeds:
        for sae in study_saes_for(cfg):
            path = cache_dir() / "sae" / f"{sae.name}-L{cfg.layer}-s{seed}-{sae_key(lm, cfg, sae, seed, fp)}"
            out[(sae.name, seed)] = path
            if (path / "sae_weights.safetensors").exists() and (path / "cfg.json").exists():
                log.info("reusing SAE %s (seed %d) from %s", sae.name, seed, path)
                continue
            model = next(iter(initial_saes(
                lm.d_model, [spec.arch], spec.width, seed, {spec.arch: sparsity_kwargs(spec.arch, spec.k)},
                finetune_from=out[(sae.parent, seed)] if sae.parent else None, resample=spec.resample_fraction,
                device=str(lm.device)).values()))
            n_tokens = spec.finetune_tokens if sae.parent else {"pretrain": spec.pretrain_tokens,
                                                                 "chat": spec.chat_tokens}[sae.corpus]
            meta = sae_metadata(lm, cfg.layer, sae.corpus, spec.max_tokens, study_sae=sae.name, seed=seed,
                                finetuned_from=str(out[(sae.parent, seed)]) if sae.parent else None,
                                excluded_benchmark_requests=len(exclude))
            train_cfg = train_config(n_tokens, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed,
                                     lm_dtype=lm.dtype, curve_points=spec.curve_points, progress=progress)
            evaluate = None
            if train_cfg.eval_every_tokens and val_tokens is not None and is_main():
                if seed == cfg.seed and sae.corpus not in lm_losses:
                    lm_losses[sae.corpus] = held_out_lm_loss(lm, cfg, sae.corpus, exclude)
                evaluate = curve_evaluator(val_tokens, lm_losses.get(sae.corpus) if seed == cfg.seed else None)
            log.info("training SAE %s seed %d (%s, %d latents) on %d %s tokens x %d epochs", sae.name, seed, spec.arch,
                     spec.width, n_tokens, sae.corpus, spec.epochs)
            t0 = time.perf_counter()
            corpora.activations(sae.corpus)  # extracted (or read from the cache) by the first SAE that needs it
            t1 = time.perf_counter()
            train_saes({sae.name: model}, corpora.stream(sae, seed), path, train_cfg, meta, device=lm.device,
                       resume=(path / "checkpoint.pt").exists(), evaluate=evaluate)
            if not is_main():
                continue
            # how it was made, for the reports of runs that reuse it (training.json has no clock)
            write_json(path / "trained.json", {"train_seconds": round(time.perf_counter() - t1, 1),
                                               "corpus_seconds": round(t1 - t0, 1), "git_commit": git_commit(),
                                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                               "unix": time.time()})
            (path / "checkpoint.pt").unlink(missing_ok=True)
    return out


def sae_provenance(paths: dict[tuple[str, int], Path], started: float) -> list[dict[str, Any]]:
    """Per SAE: trained by this run (after `started`, a `time.time()`) or before it, and by which
    commit in how long, from its `trained.json` (absent for SAEs older than that record)."""
    from assay.fileio import read_json

    rows = []
    for (name, seed), path in paths.items():
        made = read_json(path / "trained.json") if (path / "trained.json").exists() else {}
        rows.append({"sae": name, "seed": seed, "dir": path.name, "run_started": started,
                     "trained_in_this_run": made.get("unix", 0.0) >= started,
                     **{k: made.get(k) for k in ("git_commit", "created", "train_seconds", "corpus_seconds")}})
    return rows
