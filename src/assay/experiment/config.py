"""The study's configuration: one pydantic model, with presets sized for a laptop CPU or GDM's scale."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SAESpec(BaseModel):
    """How the study's SAEs are trained (all three share architecture and width)."""

    arch: str = Field("topk", description="SAE architecture (see `assay.sae.ARCHITECTURES`).")
    width: int = Field(2048, description="Number of latents (d_sae).")
    k: int = Field(32, description="Active latents per token for TopK-style SAEs.")
    pretrain_tokens: int = Field(300_000, description="Wikipedia tokens for the pretraining SAE.")
    chat_tokens: int = Field(300_000, description="ShareGPT chat tokens for the SAE trained on chat from scratch.")
    finetune_tokens: int = Field(100_000, description="ShareGPT chat tokens to finetune the pretraining SAE on.")
    epochs: int = Field(1, description="Passes over each SAE's tokens (extraction costs far more than training).")
    resample_fraction: float = Field(0.0, description="Fraction of latents re-initialised before finetuning.")
    max_tokens: int = Field(512, description="Tokens per training document at most.")
    batch_size: int = Field(4096, description="Training batch (tokens).")
    lr: float = Field(3e-4, description="Adam learning rate.")
    eval_texts: int = Field(32, description="Held-out texts per corpus for CE loss recovered.")


class StudyConfig(BaseModel):
    """`assay experiment harmful-intent`: every knob that changes the numbers."""

    preset: Literal["quick", "full"] = Field("quick", description="Benchmark size (data preset).")
    data: str | None = Field(None, description="A benchmark directory or user JSONL/CSV to use instead of the preset's benchmark.")
    subsample: int | None = Field(None, description="At most this many examples per split and class (smoke runs).")
    model: str = Field("gemma-3-270m", description="HF id, local path, .gguf file or the bundled default.")
    layer: int = Field(9, description="Residual stream after this block (0-indexed).")
    dtype: str = Field("float32", description="Model dtype for every forward pass.")
    seed: int = Field(0, description="Seed for data, SAEs, probes and bootstrap.")
    dense_features: list[str] = Field(
        ["all.max", "all.mean", "all.last", "resp-5", "user.mean"],
        description="Aggregations the dense probes are trained on (all reported).",
    )
    sae_features: list[str] = Field(["all.max", "all.mean"], description="Aggregations of SAE latents for SAE probes.")
    ks: list[int] = Field([1, 2, 5, 10, 20, 50], description="k values of the k-sparse SAE probes.")
    selectors: list[str] = Field(["mean_diff", "l1"], description="How k-sparse probes choose latents.")
    attention_probes: bool = Field(True, description="Also train attention and max-of-rolling-means probes on tokens.")
    attention_max_tokens: int = Field(512, description="Attention probes read at most the last N tokens of a prompt.")
    baselines: bool = Field(True, description="Also run the TF-IDF and MiniLM text baselines.")
    target_fpr: float = Field(0.01, description="FPR the threshold is calibrated for on benign validation data.")
    n_boot: int = Field(1000, description="Bootstrap resamples for confidence intervals.")
    token_budget: int | None = Field(None, description="Padded tokens per forward batch (default by device).")
    sae: SAESpec = Field(default_factory=SAESpec, description="The SAEs.")

    @classmethod
    def preset_config(cls, preset: str, **overrides) -> "StudyConfig":
        if preset == "full":
            # GDM's data scale. The SAEs are sized for hours on a 2-core CPU, far below GDM's
            # (Gemma Scope saw billions of tokens): raise the token counts where compute allows.
            sae = SAESpec(width=4096, k=32, pretrain_tokens=600_000, chat_tokens=600_000, finetune_tokens=200_000,
                          epochs=2, max_tokens=512, eval_texts=32)
            base = cls(preset="full", sae=sae, attention_max_tokens=256)
        elif preset == "quick":
            # Sized for a 2-core CPU in about ten minutes: extraction dominates, so the SAEs see
            # few unique tokens, several times over, and probes read max-pooled latents only.
            sae = SAESpec(width=2048, k=32, pretrain_tokens=100_000, chat_tokens=100_000, finetune_tokens=50_000,
                          epochs=3, max_tokens=256, batch_size=2048, eval_texts=16)
            base = cls(preset="quick", n_boot=500, sae=sae, sae_features=["all.max"])
        else:
            raise ValueError(f"unknown preset {preset!r}: use quick or full")
        return base.model_copy(update=overrides)
