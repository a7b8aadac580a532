"""Verdicts on the paper's headline findings, computed from a grid's table (never hard-coded).

Each check returns {finding, claim, ours, paper, agrees}: `ours` and `paper` are one-line summaries of the same
computation on our numbers and on the paper's, `agrees` is True/False, or None when there is not enough data.
The paper side is computed from `paper.py` wherever the paper prints the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from sweepdae.report.paper import HEADLINE_FINDINGS, PAPER, canonical_label, get_reference
from sweepdae.report.tables import TableData

__all__ = ["FINDING_CHECKS", "Verdict", "compute_findings", "spearman"]

Verdict = dict[str, Any]
# Tolerances, in probe points: "do as well" (headline 3) and "about as well" (headline 5: within ~1.5 pts).
KL_TOLERANCE = 1.0
IMAGE_PREDICTION_TOLERANCE = 1.5
_TAB2 = PAPER["tab2"]
_LEVELS = PAPER["noise_levels"]


_OTHER_CLAIMS = {"trajectory": "Each step of the trajectory changes accuracy the way it does in the paper."}


def _claim(name: str) -> str:
    return next((h.text for h in HEADLINE_FINDINGS if name in h.checks), _OTHER_CLAIMS.get(name, name))


def _verdict(name: str, ours: str, paper: str, agrees: bool | None) -> Verdict:
    return {"finding": name, "claim": _claim(name), "ours": ours, "paper": paper, "agrees": agrees}


def _primary(table: TableData) -> str:
    """The metric findings are about: the probe accuracy when reported, else the first metric."""
    return "probe_top1" if "probe_top1" in table.metrics else table.metrics[0]


def _matrix(table: TableData, metric: str, value: str = "mean") -> pd.DataFrame:
    """rows x cols of one metric (our means or the paper's numbers), in the table's order; NaN where missing."""
    t = table.tidy[table.tidy["metric"] == metric]
    m = t.pivot_table(index="row_i", columns="col_i", values=value, aggfunc="first", dropna=False)
    rows = t.drop_duplicates("row_i").set_index("row_i")["row"]
    cols = t.drop_duplicates("col_i").set_index("col_i")["col"]
    m = m.reindex(index=sorted(rows.index), columns=sorted(cols.index))
    m.index, m.columns = [rows[i] for i in m.index], [cols[i] for i in m.columns]
    return m.astype(float)


def _d_lines(table: TableData, value: str) -> pd.DataFrame | None:
    """Lines (one per tokenizer) x d labels: d is the axis named "d" / tokenizer.latent_dim, else the columns.

    Only the lines the paper has numbers for: an extra row (e.g. Tab. 2's "patch_pca per-dim" ablation) is shown
    in the table but left out of the "every tokenizer" checks."""
    m = _matrix(table, _primary(table), value)
    paper = _matrix(table, _primary(table), "paper")
    if table.row_dim == "d" and table.col_dim != "d":
        m, paper = m.T, paper.T
    elif table.col_dim is None:
        if table.row_dim is None:
            return None
        m, paper = m.T, paper.T
    if paper.notna().to_numpy().any():
        m = m.loc[[i for i in m.index if paper.loc[i].notna().any()]]
    return m


def _fmt_set(labels: list[str], order: list[str]) -> str:
    ordered = [x for x in order if x in labels]
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"


def _argmaxes(m: pd.DataFrame, min_points: int = 3) -> dict[str, str]:
    out = {}
    for line, vals in m.iterrows():
        v = vals.dropna()
        if len(v) >= min_points:
            out[str(line)] = str(v.idxmax())
    return out


def optimal_latent_dim(table: TableData) -> Verdict:
    name = "optimal_latent_dim"
    ours_m, paper_m = _d_lines(table, "mean"), _d_lines(table, "paper")
    if ours_m is None or paper_m is None:
        return _verdict(name, "no latent-dim axis in this table", "", None)
    order = [str(c) for c in ours_m.columns]
    ours = _argmaxes(ours_m)
    ref = get_reference(table.mirrors)
    paper_best = list(ref.best) if ref and ref.best else sorted(set(_argmaxes(paper_m).values()), key=order.index)
    paper = f"optimal d: {_fmt_set(paper_best, order)}" if paper_best else "not given for these labels"
    if not ours:
        return _verdict(name, "not enough data (a tokenizer needs 3 finished d values)", paper, None)
    votes = list(ours.values())
    best_mean = ours_m.max(axis=0)
    overall = max(set(votes), key=lambda d: (votes.count(d), best_mean.get(d, -math.inf)))
    detail = ", ".join(f"{k} {v}" for k, v in ours.items())
    text = f"optimal d: {overall}" + (f" ({detail})" if len(ours) > 1 else "")
    if not paper_best or not all(p in order for p in paper_best):
        return _verdict(name, text, paper, None)
    lo, hi = min(order.index(p) for p in paper_best), max(order.index(p) for p in paper_best)
    return _verdict(name, text, paper, lo <= order.index(overall) <= hi)


def _unimodal(values: list[float]) -> bool:
    """Rises then falls (either part may be empty; ties do not break it)."""
    signs = [np.sign(b - a) for a, b in zip(values, values[1:], strict=False) if b != a]
    falling = False
    for s in signs:
        if s < 0:
            falling = True
        elif falling:
            return False
    return True


def _unimodal_lines(m: pd.DataFrame) -> dict[str, bool]:
    return {str(k): _unimodal(list(v.dropna())) for k, v in m.iterrows() if v.notna().sum() >= 3}


def unimodal_in_d(table: TableData) -> Verdict:
    name = "unimodal_in_d"
    ours_m, paper_m = _d_lines(table, "mean"), _d_lines(table, "paper")
    if ours_m is None or paper_m is None:
        return _verdict(name, "no latent-dim axis in this table", "", None)
    ours, paper = _unimodal_lines(ours_m), _unimodal_lines(paper_m)
    paper_text = (f"unimodal for {sum(paper.values())} of {len(paper)}" if paper
                  else "unimodal for every tokenizer (stated)")
    if not ours:
        return _verdict(name, "not enough data (a line needs 3 finished d values)", paper_text, None)
    bad = [k for k, ok in ours.items() if not ok]
    text = f"unimodal for {len(ours) - len(bad)} of {len(ours)}" + (f" (not: {', '.join(bad)})" if bad else "")
    return _verdict(name, text, paper_text, not bad and (all(paper.values()) if paper else True))


def _groups(m: pd.DataFrame) -> tuple[float, float] | None:
    """Best value of the KL-free tokenizers (patch AE, PCA) and of the KL ones (patch VAE, conv VAE)."""
    canon = {str(k): canonical_label(_TAB2, str(k), _TAB2.rows) for k in m.index}
    best = {c: float(m.loc[k].max()) for k, c in canon.items() if c and m.loc[k].notna().any()}
    free = [best[c] for c in ("patch_ae", "patch_pca") if c in best]
    kl = [best[c] for c in ("patch_vae", "conv_vae") if c in best]
    return (max(free), max(kl)) if free and kl else None


def kl_unnecessary(table: TableData) -> Verdict:
    name = "kl_unnecessary"
    ours_m, paper_m = _d_lines(table, "mean"), _d_lines(table, "paper")
    if ours_m is None or paper_m is None:
        ours_m, paper_m = _matrix(table, _primary(table)), _matrix(table, _primary(table), "paper")
    ours, paper = _groups(ours_m), _groups(paper_m)
    p_text = f"patch AE/PCA {paper[0]:.1f} vs patch VAE/conv VAE {paper[1]:.1f} ({paper[0] - paper[1]:+.1f})" \
        if paper else ""
    if ours is None:
        return _verdict(name, "not enough data (needs a finished KL-free and a KL tokenizer)", p_text, None)
    text = f"patch AE/PCA {ours[0]:.1f} vs patch VAE/conv VAE {ours[1]:.1f} ({ours[0] - ours[1]:+.1f})"
    return _verdict(name, text, p_text, ours[0] - ours[1] >= -KL_TOLERANCE)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _pairs(table: TableData, value: str, acc: str) -> tuple[list[float], list[float]]:
    t = table.tidy
    a = t[t["metric"] == acc].set_index(["row_i", "col_i"])[value]
    f = t[t["metric"] == "fid"].set_index(["row_i", "col_i"])[value]
    both = pd.concat([a, f], axis=1, keys=["a", "f"]).dropna().sort_index()
    return list(both["a"]), list(both["f"])


def fid_vs_accuracy(table: TableData) -> Verdict:
    name = "fid_vs_accuracy"
    acc = _primary(table)
    if "fid" not in table.metrics or acc == "fid":
        return _verdict(name, "the grid reports no FID beside accuracy", "", None)
    pa, pf = _pairs(table, "paper", acc)
    rho_p = spearman(pa, pf) if len(pa) >= 3 else math.nan
    p_text = f"Spearman(acc, FID) = {rho_p:+.2f} over {len(pa)}" if math.isfinite(rho_p) else ""
    oa, of = _pairs(table, "mean", acc)
    if len(oa) < 3:
        return _verdict(name, f"not enough data ({len(oa)} positions with both accuracy and FID, need 3)", p_text,
                        None)
    rho = spearman(oa, of)
    if not math.isfinite(rho):
        return _verdict(name, "accuracy or FID is constant: no rank correlation", p_text, None)
    how = "accuracy rises while FID worsens" if rho > 0 else "FID improves with accuracy"
    text = f"Spearman(acc, FID) = {rho:+.2f} over {len(oa)}: {how}"
    expected = np.sign(rho_p) if math.isfinite(rho_p) and rho_p != 0 else 1.0
    return _verdict(name, text, p_text, bool(np.sign(rho) == expected))


def _levels(m: pd.DataFrame) -> tuple[float, float] | None:
    """Mean multi-level and single-level values, labels matched on either table dimension."""
    for frame in (m, m.T):
        canon = {str(k): canonical_label(_LEVELS, str(k), _LEVELS.rows) for k in frame.index}
        multi = [frame.loc[k] for k, c in canon.items() if c == "multi"]
        single = [frame.loc[k] for k, c in canon.items() if c == "single"]
        if multi and single:
            diff = (multi[0] - single[0]).dropna()
            if len(diff):
                keep = diff.index
                return float(multi[0][keep].mean()), float(single[0][keep].mean())
    return None


def multi_level_helps(table: TableData) -> Verdict:
    name = "multi_level_helps"
    ours, paper = _levels(_matrix(table, _primary(table))), _levels(_matrix(table, _primary(table), "paper"))
    p_text = f"{paper[0] - paper[1]:+.1f} pts (multi {paper[0]:.1f} vs single {paper[1]:.1f})" if paper else \
        "+3.0 pts (multi 64.5 vs single 61.5)"
    if ours is None:
        return _verdict(name, "not enough data (needs finished single- and multi-level cells)", p_text, None)
    text = (f"{ours[0] - ours[1]:+.1f} pts (multi {ours[0]:.1f} vs single {ours[1]:.1f}; the single-level model "
            "probed at its own t, the only t it was trained on)")
    return _verdict(name, text, p_text, ours[0] > ours[1])


def _is_latent(recipe: Any) -> bool | None:
    """Does this step predict in latent space (target eps or z0, latent output)? None when the recipe is unknown."""
    if not isinstance(recipe, Mapping):
        return None
    obj = recipe.get("objective") or {}
    return obj.get("target") in ("eps", "z0") and obj.get("output_space", "latent") == "latent"


def _last_vs_best(values: list[float], latent: list[bool]) -> tuple[float, float, int] | None:
    if len(values) < 2 or not math.isfinite(values[-1]):
        return None
    cand = [(v, i) for i, v in enumerate(values[:-1]) if latent[i] and math.isfinite(v)]
    if not cand:
        return None
    best, i = max(cand)
    return values[-1], best, i


def image_prediction_ok(table: TableData) -> Verdict:
    name = "image_prediction_ok"
    if not table.trajectory:
        return _verdict(name, "needs a trajectory table (rows = step)", "", None)
    acc = _primary(table)
    t = table.tidy[table.tidy["metric"] == acc].sort_values(["row_i", "col_i"]).drop_duplicates("row_i")
    rows = list(t["row"])
    ours_v, paper_v = [float(x) for x in t["mean"]], [float(x) for x in t["paper"]]
    recipes = table.positions.drop_duplicates("row_i").set_index("row_i")["recipe"]
    known = [_is_latent(recipes.get(i)) for i in t["row_i"]]
    # Without recipes every step but the last counts as latent prediction (in Tab. 3 the best one is the first).
    latent = [bool(k) for k in known] if all(k is not None for k in known) else [True] * len(rows)
    paper = _last_vs_best(paper_v, latent)
    p_text = f"last step {paper[0]:.1f} vs best latent step {paper[1]:.1f} ({paper[0] - paper[1]:+.1f})" \
        if paper else ""
    ours = _last_vs_best(ours_v, latent)
    if ours is None:
        return _verdict(name, "not enough data (needs the last step and a finished latent-prediction step)",
                        p_text, None)
    text = f"last step {ours[0]:.1f} vs best latent step {ours[1]:.1f} ({rows[ours[2]]}): {ours[0] - ours[1]:+.1f}"
    return _verdict(name, text, p_text, ours[0] - ours[1] >= -IMAGE_PREDICTION_TOLERANCE)


def _monotone(m: pd.DataFrame) -> tuple[list[str], bool] | None:
    lines, ok = [], True
    for _, v in m.iterrows():
        v = v.dropna()
        if len(v) >= 2:
            lines.append(" < ".join(f"{k} {x:.1f}" for k, x in v.items()))
            ok = ok and bool(np.all(np.diff(v.to_numpy()) > 0))
    return (lines, ok) if lines else None


def bigger_longer_helps(table: TableData) -> Verdict:
    name = "bigger_longer_helps"
    acc = _primary(table)
    ours_m, paper_m = _matrix(table, acc), _matrix(table, acc, "paper")
    if table.col_dim is None or ours_m.shape[1] < 2:  # the varied dimension along the columns
        ours_m, paper_m = ours_m.T, paper_m.T
    ours, paper = _monotone(ours_m), _monotone(paper_m)
    p_text = "; ".join(paper[0]) if paper else ""
    if ours is None:
        return _verdict(name, "not enough data (needs 2 finished sizes or lengths)", p_text, None)
    text = "; ".join(ours[0]) + (": increasing" if ours[1] else ": not increasing")
    return _verdict(name, text, p_text, ours[1])


def _deltas(values: list[float]) -> list[float]:
    return [b - a for a, b in zip(values, values[1:], strict=False)]


def trajectory(table: TableData) -> Verdict:
    name = "trajectory"
    if not table.trajectory:
        return _verdict(name, "needs a trajectory table (rows = step)", "", None)
    withpaper = [m for m in table.metrics if table.tidy.loc[table.tidy["metric"] == m, "paper"].notna().any()]
    metric = _primary(table) if _primary(table) in withpaper or not withpaper else withpaper[0]
    t = table.tidy[table.tidy["metric"] == metric].sort_values(["row_i", "col_i"]).drop_duplicates("row_i")
    ours, paper = _deltas([float(x) for x in t["mean"]]), _deltas([float(x) for x in t["paper"]])
    fmt = lambda xs: ", ".join("?" if not math.isfinite(x) else f"{x:+.1f}" for x in xs)  # noqa: E731
    both = [(o, p) for o, p in zip(ours, paper, strict=True) if math.isfinite(o) and math.isfinite(p)]
    agree = sum(1 for o, p in both if np.sign(o) == np.sign(p))
    p_text = fmt(paper) if any(math.isfinite(x) for x in paper) else "no paper numbers for these steps"
    if not both:
        return _verdict(name, f"step changes {fmt(ours)}: not enough data to compare", p_text, None)
    text = f"step changes {fmt(ours)}; {agree} of {len(both)} agree in sign with the paper"
    return _verdict(name, text, p_text, agree * 2 > len(both))


FINDING_CHECKS: dict[str, Callable[[TableData], Verdict]] = {
    "optimal_latent_dim": optimal_latent_dim,
    "unimodal_in_d": unimodal_in_d,
    "kl_unnecessary": kl_unnecessary,
    "fid_vs_accuracy": fid_vs_accuracy,
    "multi_level_helps": multi_level_helps,
    "image_prediction_ok": image_prediction_ok,
    "bigger_longer_helps": bigger_longer_helps,
    "trajectory": trajectory,
}


def compute_findings(spec: Mapping[str, Any], table: TableData) -> list[Verdict]:
    """One verdict per finding named in the grid's `[report] findings`, in that order."""
    out = []
    for name in (spec.get("report") or {}).get("findings") or []:
        check = FINDING_CHECKS.get(str(name))
        if check is None:
            out.append(_verdict(str(name), "unknown finding", "", None))
        else:
            out.append(check(table))
    return out
