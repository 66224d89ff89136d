r"""Every dose loss of the book on one benchmark: OpenKBP, one split, one model, one budget, the same seeds.

Each paper compares only its own losses, each on its own data, model and
training budget. Here the MSE, the MAE, the sharp loss (Bai et al. 2021) at the
paper's γ = 100 and at the γ its own selection rule picks on OpenKBP, the MAE +
DVH loss (Soomro et al.) and the sharp loss + DVH are trained side by side:

* the arms are :data:`ARMS` (:data:`rtlearn.experiments.dvh_loss.BENCHMARK_ARMS`),
  built, trained and scored by :mod:`rtlearn.experiments.dvh_loss` (DeepDoseNet,
  the OpenKBP dose and DVH scores on every test patient with a CT);
* the sharp loss normalises doses by 70 Gy (OpenKBP's highest prescription,
  where Bai et al. used 6000 cGy for breast), so its sigmoid turns on at
  0.03 × 70 Gy = 2.1 Gy; "sharp + DVH" adds the DVH term of the MAE + DVH arm, with the
  sharp term in Gy² (:class:`rtlearn.experiments.dvh_loss.SharpPlusDVHLoss`);
* the ``study`` profile is the DVH-loss chapter's study (``python -m
  rtlearn.study dvh_loss --profile study``): one recorded study trains every
  arm, so the MSE, MAE and MAE + DVH rows here are the same runs as there.

The chapter's shape::

    from rtlearn.experiments import dose_benchmark as ex
    cfg = ex.default_config()                  # the dvh_loss sizes with every benchmark arm
    record = ex.run(cfg, seed=0)               # dvh_loss.run
    live = from_runs("dvh_loss", "quick", cfg, {0: record})
    ex.tables(live)                            # the benchmark table, claims, leaderboard

The comparisons of :data:`CLAIMS` are stated here, before any number is seen.
"""
from __future__ import annotations

from ..metrics.stats import Claim
from . import dvh_loss
from .dvh_loss import BENCHMARK_ARMS, SHARP_BEST_GAMMA, sharp_arm

__all__ = ["ARMS", "CLAIMS", "STUDY_CHAPTER", "default_config", "load_data", "run", "TINY"]

#: The benchmark's arms, in the order of its table.
ARMS = BENCHMARK_ARMS
#: The recorded study this chapter reads (its runs are shared with the DVH-loss chapter).
STUDY_CHAPTER = "dvh_loss"

_SL100, _SLBEST, _SLDVH = sharp_arm(100.0), sharp_arm(SHARP_BEST_GAMMA), sharp_arm(100.0, True)


def _pair(a: str, b: str, words: str) -> tuple:
    return (Claim("dose_error", a, b, "lower", f"{b} gives a lower dose score than {a} ({words})"),
            Claim("dvh_error", a, b, "lower", f"{b} gives a lower DVH score than {a} ({words})"))


#: The benchmark's own questions (the DVH-loss chapter tests the paper's three arms), per test patient,
#: Holm-adjusted together: does the sharp loss beat the MSE on OpenKBP (at the paper's γ and at the γ its
#: rule picks), does a DVH term help the sharp loss, and does the MAE + DVH loss beat the sharp loss?
CLAIMS = (
    *_pair("MSE", _SL100, "Bai et al.'s claim, on head and neck"),
    *_pair("MSE", _SLBEST, "the γ chosen by Bai et al.'s rule on OpenKBP"),
    *_pair(_SL100, _SLDVH, "a DVH term added to the sharp loss"),
    *_pair(_SL100, "MAE+DVH", "Soomro et al.'s hybrid against Bai et al.'s loss"),
)


def default_config(profile: str | None = None, **overrides) -> dvh_loss.Config:
    """The DVH-loss chapter's sizes of ``profile`` with every benchmark arm (study and full: also the sweep).

    In the quick profile (phantom slices, a demonstration) the arms are :data:`ARMS`;
    the study and full profiles already train them (:data:`rtlearn.experiments.dvh_loss.STUDY_ARMS`).
    """
    cfg = dvh_loss.default_config(profile, **overrides)
    if "arms" not in overrides and not set(ARMS) <= set(cfg.arms):
        cfg = dvh_loss.default_config(profile, **{**overrides, "arms": ARMS})
    return cfg


load_data = dvh_loss.load_data
run = dvh_loss.run
#: See :data:`rtlearn.experiments.dvh_loss.TINY`.
TINY = dvh_loss.TINY
