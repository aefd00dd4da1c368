"""The study's configuration: one pydantic model, with presets sized for a laptop CPU or GDM's scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class SAESpec(BaseModel):
    """How the study's SAEs are trained (all share architecture and width)."""

    arch: str = Field("topk", description="SAE architecture (see `assay.sae.ARCHITECTURES`).")
    width: int = Field(2048, description="Number of latents (d_sae).")
    k: int = Field(32, description="Active latents per token for TopK-style SAEs.")
    pretrain_tokens: int = Field(300_000, description="Tokens of the pretraining mix (Wikipedia and a dictionary) for "
                                 "the pretraining SAE.")
    chat_tokens: int = Field(300_000, description="ShareGPT chat tokens for the SAE trained on chat from scratch.")
    finetune_tokens: int = Field(
        100_000, description="Tokens to finetune the pretraining SAE on: chat tokens for the chat finetune, and as "
        "many fresh pretraining tokens for its equal-steps control.")
    epochs: int = Field(1, description="Passes over each SAE's tokens (extraction costs far more than training).")
    resample_fraction: float = Field(0.0, description="Fraction of latents re-initialised before finetuning.")
    max_tokens: int = Field(512, description="Tokens per training document at most.")
    batch_size: int = Field(4096, description="Training batch (tokens).")
    lr: float = Field(3e-4, description="Adam learning rate.")
    control: bool = Field(True, description="Also train the equal-steps control: the pretraining SAE trained on "
                          "`finetune_tokens` more Wikipedia tokens, so finetuning on chat is compared like for like.")
    eval_texts: int = Field(64, description="Held-out documents per corpus for delta LM loss and CE loss recovered.")
    eval_max_tokens: int = Field(128, description="Tokens per held-out document at most.")
    curve_points: int = Field(8, ge=0, description="Held-out evaluations during each SAE's training (its curve: "
                              "FVU on the benchmark's validation tokens, and delta LM loss for the first seed); 0: none.")


# The study's SAEs: what each is trained on and from, by name (the findings and the report read
# the names; `experiment.saes` trains them).
@dataclass(frozen=True)
class StudySAE:
    name: str
    corpus: str  # what it is trained on: "pretrain" or "chat"
    parent: str | None  # the SAE it continues from
    description: str


STUDY_SAES = (
    StudySAE("pretrain", "pretrain", None, "pretraining text (Wikipedia and a dictionary)"),
    StudySAE("chat", "chat", None, "chat (ShareGPT conversations)"),
    StudySAE("pretrain+chat-ft", "chat", "pretrain", "pretraining SAE finetuned on chat"),
    StudySAE("pretrain+pretrain-ft", "pretrain", "pretrain", "pretraining SAE trained on as many more fresh "
             "pretraining tokens (equal-steps control for the chat finetune)"),
)


def study_saes_for(cfg: StudyConfig) -> list[StudySAE]:
    return [s for s in STUDY_SAES if cfg.sae.control or s.name != "pretrain+pretrain-ft"]


SAE_NAMES = tuple(s.name for s in STUDY_SAES)


def by_name(name: str) -> StudySAE:
    return next(s for s in STUDY_SAES if s.name == name)



class StudyConfig(BaseModel):
    """`assay experiment harmful-intent`: every knob that changes the numbers."""

    preset: Literal["demo", "quick", "full"] = Field("quick", description="The study's size: quick and full "
                                                   "are data presets too; demo reads the quick benchmark.")
    data: str | None = Field(None, description="A benchmark directory or user JSONL/CSV to use instead of the preset's benchmark.")
    subsample: int | None = Field(None, description="At most this many examples per split and class (smoke runs).")
    model: str = Field("gemma-3-270m", description="HF id, local path, .gguf file or the bundled default.")
    layer: int | None = Field(None, description="Residual stream after this block (0-indexed); None: the layer whose "
                              "dense probe is best on validation in the layer sweep (the middle block without one), "
                              "fixed once the model is loaded.")
    layer_sweep: bool = Field(True, description="Fit the dense probe at every layer (one forward pass), plot it, and, "
                              "when `layer` is None, use the layer best on validation.")
    layer_sweep_from: str | None = Field(None, description="A layer_sweep.json written by `assay experiment layers` "
                                         "for this same setting, used instead of sweeping again (checked against "
                                         "the study; the full preset's sweep is run this way, as its own command).")
    layer_stride: int = Field(1, ge=1, description="Sweep every N-th block (and always the last, the middle one and a given `layer`).")
    dtype: str = Field("float32", description="Model dtype for every forward pass.")
    dtype_choice: dict = Field({}, description="How the dtype was chosen (the matmul speeds measured in the same run); "
                               "a record only, in no cache key.")
    seed: int = Field(0, description="Seed for the data, the bootstrap, and the first of the model seeds.")
    n_seeds: int = Field(1, description="SAEs and stochastic probes are trained with seeds seed, seed+1, ...; "
                         "deterministic fits (logistic regression, difference of means, TF-IDF) once.")
    aggregations: list[str] = Field(
        ["all.max", "all.mean", "all.last", "resp-5", "user.mean"],
        description="Aggregations every pooled probe reads: dense and SAE probes alike (all reported).",
    )
    methods: list[str] = Field(
        default_factory=lambda: [n for n, m in _methods().items() if m.study],
        description="Methods to run, by the registry's names (assay.probes.METHODS); the paper's set by default.")
    ks: list[int] = Field([1, 2, 5, 10, 20, 50], description="k values of the k-sparse SAE probes.")
    headline_k: int = Field(20, description="The k the headline comparisons quote (fixed in advance, never chosen).")
    selectors: list[str] = Field(["mean_diff", "l1"], description="How k-sparse probes choose latents.")
    attention_max_tokens: int = Field(512, description="Attention probes read at most the last N tokens of a prompt.")
    target_fpr: float = Field(0.01, description="FPR the threshold is calibrated for on benign calibration data.")
    calibrate_on: str = Field("calib", description="Split whose benign examples set every threshold (never used "
                              "for fitting or model selection; carved from validation behaviours when missing).")
    n_boot: int = Field(1000, description="Bootstrap resamples for confidence intervals.")
    stability_resamples: int = Field(20, description="Bootstrap resamples of the training clusters used to measure "
                                     "how stable the k-sparse probes' latent choice is.")
    autointerp_latents: int = Field(30, ge=0, description="Random live latents per SAE (first seed) explained and "
                                    "scored after the k-sparse probe's own (rule-based pair; 0 skips auto-interp).")
    autointerp_lm_latents: int = Field(6, ge=0, description="Latents of the first SAE also explained and scored by "
                                       "the studied model itself (half probe-selected, half random; 0 skips).")
    autointerp_tokens: int = Field(20_000, ge=1000, description="Held-out Wikipedia and ShareGPT tokens (half each) "
                                   "that, with the training prompts, the latents are explained and scored on.")
    autointerp_max_tokens: int = Field(128, ge=8, description="Tokens per auto-interp document, at most.")
    token_budget: int | None = Field(None, description="Padded tokens per forward batch (default by device).")
    sae: SAESpec = Field(default_factory=SAESpec, description="The SAEs.")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in _methods()]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; the registry has {', '.join(_methods())}")
        return names

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_seeds)]

    @classmethod
    def preset_config(cls, preset: str, **overrides) -> "StudyConfig":
        if preset == "full":
            # GDM's data scale, as three commands: the layer sweep (`assay experiment layers --preset
            # full`: 18 blocks for a million tokens, 47 min in float32 on an AVX2 CPU), the SAEs
            # (`assay experiment saes --preset full --layer-sweep-from ...`), then this study with
            # --layer-sweep-from, which reuses both. The SAEs follow the recipe measured on held-out
            # curves at the study's layer (docs/results/saes-full): batches of 1,024 tokens at lr 1e-3
            # (4,096 at 3e-4 took four times the tokens to the same FVU), k=64 (at k=32 the
            # pretraining SAE's FVU on the benchmark's tokens was still 0.27 after 8M token-steps), 4 epochs over
            # 1.9M unique tokens of each corpus (held-out FVU still falling, no overfitting), and three
            # seeds, so SAE-probe rows carry their seed spread. Extraction is the budget: 4.2M corpus
            # tokens. The LM-explainer pass reads 2 latents (2 to 3 minutes each on a CPU).
            sae = SAESpec(width=4096, k=64, pretrain_tokens=1_900_000, chat_tokens=1_900_000,
                          finetune_tokens=200_000, epochs=4, max_tokens=512, batch_size=1024, lr=1e-3)
            base = cls(preset="full", sae=sae, attention_max_tokens=256, n_seeds=3, stability_resamples=10,
                       autointerp_latents=30, autointerp_lm_latents=2, autointerp_tokens=20_000)
        elif preset == "quick":
            # Sized for a 2-core CPU in minutes: extraction dominates, so the SAEs see few unique
            # tokens, several times over; one seed; the layer sweep reads every other block.
            sae = SAESpec(width=2048, k=32, pretrain_tokens=100_000, chat_tokens=100_000, finetune_tokens=50_000,
                          epochs=3, max_tokens=256, batch_size=2048, eval_texts=64, eval_max_tokens=64)
            # No LM explainer pass: on this CPU it cost about 3 minutes per latent (6 latents took
            # 2/3 of the quick preset's auto-interp stage); the full preset runs it.
            base = cls(preset="quick", n_boot=500, sae=sae, stability_resamples=10, layer_stride=2,
                       autointerp_lm_latents=0)
        elif preset == "demo":
            # What `make demo` runs: every stage of the quick study, at a size that keeps a cold run
            # (model conversion and benchmark build included) within a few minutes on a 2-core CPU.
            # The quick benchmark with at most 30 rows per split and class (240 of its 700), SAEs of
            # 1,024 latents on 12,000 tokens per corpus (extraction to the study's layer is the cost),
            # fewer k values and auto-interp latents. Its numbers show the pipeline working; its
            # intervals are wide and its SAEs undertrained: the quick and full presets are the study.
            sae = SAESpec(width=1024, k=32, pretrain_tokens=12_000, chat_tokens=12_000, finetune_tokens=6_000,
                          epochs=5, max_tokens=128, batch_size=512, eval_texts=8, eval_max_tokens=64)
            base = cls(preset="demo", data="quick", subsample=30, n_boot=200, sae=sae, stability_resamples=5,
                       layer_stride=2, ks=[1, 5, 20], autointerp_latents=8, autointerp_lm_latents=0,
                       autointerp_tokens=4_000)
        else:
            raise ValueError(f"unknown preset {preset!r}: use demo, quick or full")
        return base.model_copy(update=overrides)


def _methods() -> dict:
    """The method registry, imported on first use (it imports torch)."""
    from assay.probes.methods import METHODS

    return METHODS
