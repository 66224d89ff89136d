"""The sharp-loss experiment on OpenKBP (head and neck): :mod:`rtlearn.experiments.sharp` with ``source="openkbp"``.

A study is recorded per chapter name and profile, so the OpenKBP sweep of the
sharp-loss chapter has a name of its own:
``python -m rtlearn.study sharp_openkbp --profile study --seeds 0-2``. Everything
else (data, model, arms, run, tables, figures) is the sharp-loss module's.
"""
from __future__ import annotations

from . import sharp
from .sharp import Config, load_data, run, tables  # noqa: F401  (the chapter-module shape)

__all__ = ["default_config", "load_data", "run", "tables", "CLAIMS", "Config", "TINY"]

#: The claims tested on OpenKBP (:data:`rtlearn.experiments.sharp.OPENKBP_CLAIMS`).
CLAIMS = sharp.OPENKBP_CLAIMS
#: Overrides that make ``default_config("study", **TINY)`` run one seed in a few seconds (tests; needs the data).
TINY = dict(n_train=2, n_val=1, n_test=2, gammas=(100.0, 500.0), epochs=1, depth=2, width=4, slice_step=16)


def default_config(profile: str | None = None, **overrides) -> Config:
    """:func:`rtlearn.experiments.sharp.default_config` with ``source="openkbp"`` (same profiles, same overrides)."""
    if overrides.get("source", "openkbp") != "openkbp":
        raise ValueError(f"sharp_openkbp is the OpenKBP experiment; got source={overrides['source']!r}")
    return sharp.default_config(profile, **{**overrides, "source": "openkbp"})
