"""Monitors: a probe shipped as a calibrated detector (bundle, offline scoring and evaluation, HTTP)."""
