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

import numpy as np

from ..metrics.stats import Claim, format_comparison, judge, seed_summary
from ..rois import OARS, TARGETS
from ..tables import Markdown, markdown_table
from . import dvh_loss
from .dvh_loss import BENCHMARK_ARMS, SHARP_BEST_GAMMA, sharp_arm

__all__ = ["ARMS", "CLAIMS", "STUDY_CHAPTER", "default_config", "load_data", "run", "TINY", "view",
           "benchmark_rows", "benchmark_table", "claims_table", "leaderboard_table", "tables", "plot_scores"]

#: The benchmark's arms, in the order of its table.
ARMS = BENCHMARK_ARMS
#: The recorded study this chapter reads (its runs are shared with the DVH-loss chapter).
STUDY_CHAPTER = "dvh_loss"

_SL100, _SLBEST, _SLDVH = sharp_arm(100.0), sharp_arm(SHARP_BEST_GAMMA), sharp_arm(100.0, True)


#: The pairs of the per-structure table (paired Wilcoxon per DVH metric, exploratory).
STRUCTURE_PAIRS = (("MSE", _SL100), (_SL100, _SLDVH), ("MAE", "MAE+DVH"))


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


# ---- tables ----------------------------------------------------------------------------------------------------------
def view(study):
    """The benchmark's arms of ``study`` (a recorded dvh_loss study or a live run), in :data:`ARMS` order."""
    arms = [a for a in ARMS if a in study.arms]
    if len(arms) < 2:
        raise ValueError(f"the study holds fewer than two of the benchmark's arms {ARMS}: {study.arms}")
    return study.select(arms)


def _mean_over(study, arm, keys) -> float:
    vals = np.concatenate([study.metric(dvh_loss.structure_metric(r, m), arm).ravel() for r, m in keys])
    return float(np.nanmean(vals))


def benchmark_rows(study, training=None) -> list:
    """One dict per benchmark arm of ``study``: scores (mean and sd over seeds), error groups, cost.

    Keys: ``arm``, ``dose_score``, ``dose_sd``, ``dvh_score``, ``dvh_sd`` (test, Gy), ``oar_mean``,
    ``oar_d01cc``, ``ptv`` (mean |error| of the OARs' mean dose, of their D_0.1cc, and of the PTVs'
    D99/D95/D1, over patients, structures and seeds, Gy), ``in_rois`` (the part of the dose error
    inside the ROIs, Gy), ``epochs`` (mean epochs trained), ``s_per_epoch`` (median wall time of an
    epoch, training and validation loss, over every epoch of every seed), and with ``training`` (a
    record of :mod:`rtlearn.bench.training`) ``step_ms`` and ``peak_mb`` of one training step.
    """
    study = view(study)
    cost = {r["arm"]: r for r in (training or {}).get("rows", [])}
    out = []
    for arm in study.arms:
        sc = dvh_loss.scores(study, arm, "test")
        d, v = seed_summary(sc["dose_score"]), seed_summary(sc["dvh_score"])
        hist = study.histories(arm)
        row = {"arm": arm, "dose_score": d["mean"], "dose_sd": d["sd"], "dvh_score": v["mean"], "dvh_sd": v["sd"],
               "oar_mean": _mean_over(study, arm, [(r, "mean") for r in OARS]),
               "oar_d01cc": _mean_over(study, arm, [(r, "D_0.1_cc") for r in OARS]),
               "ptv": _mean_over(study, arm, [(r, m) for r in TARGETS for m in ("D_99", "D_95", "D_1")]),
               "in_rois": float(np.nanmean(study.metric("dose_error_in_structures", arm))),
               "epochs": float(np.mean([len(h) for h in hist])),
               "s_per_epoch": float(np.median([r["seconds"] for h in hist for r in h])),
               "step_ms": cost[arm]["time_s"] * 1000 if arm in cost else np.nan,
               "peak_mb": cost[arm]["peak_mb"] if arm in cost and cost[arm]["peak_mb"] is not None else np.nan}
        out.append(row)
    return out


def benchmark_table(study, training=None) -> Markdown:
    """The benchmark's one table: test scores, error groups, epochs, time per epoch, cost of one step."""
    rows = benchmark_rows(study, training)
    sd = len(view(study).seeds) > 1
    pm = lambda m, s: (m, s) if sd else m  # noqa: E731
    body = [(r["arm"], pm(r["dose_score"], r["dose_sd"]), pm(r["dvh_score"], r["dvh_sd"]), r["in_rois"],
             r["oar_mean"], r["oar_d01cc"], r["ptv"], f"{r['epochs']:.1f}", f"{r['s_per_epoch']:.1f}",
             f"{r['step_ms']:.0f}" if np.isfinite(r["step_ms"]) else "–",
             f"{r['peak_mb']:.0f}" if np.isfinite(r["peak_mb"]) else "–") for r in rows]
    return Markdown(markdown_table(
        ["loss", "dose score (Gy)" + (" mean ± sd over seeds" if sd else ""), "DVH score (Gy)",
         "dose error in ROIs (Gy)", "OAR mean dose |error| (Gy)", "OAR D0.1cc |error| (Gy)",
         "PTV D99/D95/D1 |error| (Gy)", "epochs", "s per epoch", "one step (ms)", "peak extra MiB"], body))


def claims_table(study, rows=None) -> Markdown:
    """The comparisons of :data:`CLAIMS` (Holm over all of them): means, paired difference with CI, verdict."""
    rows = judge(view(study), CLAIMS) if rows is None else rows
    parts = []
    for metric, title in (("dose_error", "Dose score"), ("dvh_error", "DVH score")):
        sub = [r for r in rows if r["metric"] == metric]
        if sub:
            parts.append(f"**{title}** (median paired difference B − A over {sub[0]['n_cases']} test patients, "
                         f"each averaged over seeds)\n\n{format_comparison(sub)}")
    return Markdown("\n\n".join(parts))


def leaderboard_table(study) -> Markdown:
    """The published OpenKBP leaderboard and the DeepDoseNet paper's own numbers, quoted, beside every arm here."""
    return dvh_loss.leaderboard_table(view(study))


def tables(study, training=None, rows=None) -> Markdown:
    """Every table of the chapter for ``study``, one after another."""
    return Markdown("\n\n".join([
        "**Every loss on one benchmark (test patients)**", benchmark_table(study, training),
        "**The benchmark's comparisons, paired over test patients**", claims_table(study, rows),
        "**Per-structure DVH-metric errors, test patients** (exploratory; Holm over the whole table)",
        dvh_loss.structure_table(view(study), pairs=STRUCTURE_PAIRS),
        "**Next to the published leaderboard**", leaderboard_table(study)]))


# ---- figures ---------------------------------------------------------------------------------------------------------
def plot_scores(study, ax=None, published: bool = True):
    """Dose score against DVH score per arm: the mean over seeds with ± 1 sd bars (the seeds' spread).

    ``published=True`` adds the DeepDoseNet paper's Table 1 test scores and the leaderboard's top five
    as grey markers, labelled as published (all 100 test patients, 3D), for scale only.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, r in enumerate(benchmark_rows(study)):
        ax.errorbar(r["dose_score"], r["dvh_score"], xerr=r["dose_sd"] if np.isfinite(r["dose_sd"]) else None,
                    yerr=r["dvh_sd"] if np.isfinite(r["dvh_sd"]) else None, fmt="o", ms=7, capsize=3,
                    color=colors[j % len(colors)], label=f"ours: {r['arm']}")
    if published:
        for k, (rank, team, d, v) in enumerate(dvh_loss.LEADERBOARD):
            ax.plot(d, v, "s", color="0.55", ms=5, label="leaderboard top five (published)" if k == 0 else None)
        for k, arm in enumerate(dvh_loss.ARM_NAMES):
            d, v = (dvh_loss.paper_score(arm, "test", s) for s in ("dose_score", "dvh_score"))
            ax.plot(d, v, "^", color="0.35", ms=6, label="DeepDoseNet paper, Table 1 (published)" if k == 0 else None)
            ax.annotate(arm, (d, v), textcoords="offset points", xytext=(4, 4), fontsize=7, color="0.35")
    ax.set_xlabel("dose score (Gy, lower is better)")
    ax.set_ylabel("DVH score (Gy, lower is better)")
    ax.set_title("OpenKBP test scores" if view(study).config.get("source") == "openkbp" else "test scores")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return ax
