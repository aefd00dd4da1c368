"""Studies as code: a config in, one report (JSON + markdown + HTML + PNG) out."""

from assay._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "assay.experiment.config": ["SAESpec", "StudyConfig"],
    "assay.experiment.study": ["Study", "run_study"],
})
