"""Studies as code: a config in, one report (JSON + markdown + HTML + PNG) out."""

from assay.experiment.config import SAESpec, StudyConfig
from assay.experiment.study import Study, run_study

__all__ = ["SAESpec", "Study", "StudyConfig", "run_study"]
