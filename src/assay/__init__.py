"""assay: pragmatic interpretability of language models.

Do sparse autoencoders beat a plain linear probe at detecting harmful intent, in and out of
distribution? assay runs that study on any Hugging Face causal LM, offline, and turns the winner
into cheap activation-probe monitors.
"""

__version__ = "0.1.0"
