"""Verdicts on the paper's headline findings, computed from a grid's table (never hard-coded).

The statistics and decision rules are those of REPRODUCTION.md ("Decision rules"), fixed before any reproduction
was run: each statistic is computed once per seed from that seed's cells (differences paired by seed), summarised
as a mean with a 95 % Student-t interval over seeds, and the verdict is "agrees" / "disagrees" only when the whole
interval lies on one side of the finding's decision point; one seed, or an interval holding the point, is
"inconclusive".

Each check returns a Verdict (`verdict.py`): {finding, claim, readout, statistic, rule, value, interval, confidence,
seeds, per_seed, verdict, ours, paper, paper_value, readouts}; `compute_findings` adds `gate`, `design` and
`seeds_at_decision` (REPRODUCTION.md, "The regime gate and seeds until decided"): the regime gate against the
untrained nonlinear baseline turns a verdict whose cells do not beat it into `out_of_regime` (the rule's verdict
kept as `rule_verdict`), and a grid run with `--until-decided` reads its verdicts at the looks of its group-
sequential design (`sequential.py`), whose intervals replace the fixed 95 % one. `readouts` holds the same statistic
and verdict on kNN top-1 and probe_gain, shown beside the linear probe's but never deciding. The paper side
(`paper`, `paper_value`) is the same statistic on the paper's numbers (`paper.py`) wherever the paper prints them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from sweepdae.grid.spec import GridSpec
from sweepdae.report.paper import HEADLINE_FINDINGS, PAPER, canonical_label, get_reference
from sweepdae.report.sequential import Design, DesignError, fixed_design
from sweepdae.report.tables import TableData
from sweepdae.report.verdict import Gate, StepVerdict, Summary, Verdict

__all__ = ["CONFIDENCE", "FINDING_CHECKS", "GATE_BASELINE", "READOUTS", "Rule", "Verdict", "compute_findings",
           "decided", "design_of", "interval", "regime_gate", "spearman", "verdict_of"]

CONFIDENCE = 0.95  # two-sided, Student t over seeds (REPRODUCTION.md)
PRIMARY = "probe_top1"  # the paper's readout decides the verdict
READOUTS = ("probe_top1", "knn_top1", "probe_gain")  # each finding is computed on each one the cells recorded
# Margins of the "as well as" findings, in probe points (REPRODUCTION.md, Margins).
KL_MARGIN = 1.0  # finding 3, "do as well"
IMAGE_PREDICTION_MARGIN = 1.5  # finding 5, "about as well" (paper Tab. 3: 64.5 vs 65.1)
DIP_MARGIN = 1.0  # finding 2b: no dip of a point or more
_TAB2 = PAPER["tab2"]
_LEVELS = PAPER["noise_levels"]
_FREE, _KL = ("patch_ae", "patch_pca"), ("patch_vae", "conv_vae")
# The regime gate's baseline (REPRODUCTION.md): an untrained per-token ReLU layer on the cell's tokens, probed the
# cell's way (sweepdae/cell/random_features.py).
GATE_BASELINE = "random_features_probe_top1"
# The confidence of the look being read: 95 % (the fixed rule), or a sequential design's look (compute_findings).
_LOOK_CONFIDENCE: ContextVar[float] = ContextVar("look_confidence", default=CONFIDENCE)


@contextlib.contextmanager
def _at_confidence(confidence: float) -> Iterator[None]:
    token = _LOOK_CONFIDENCE.set(confidence)
    try:
        yield
    finally:
        _LOOK_CONFIDENCE.reset(token)


@dataclass(frozen=True)
class Rule:
    """A decision point and the side of it the paper's claim lies on (+1 above, -1 below)."""

    point: float
    side: int

    def text(self, name: str) -> str:
        ours, other = (">", "<") if self.side > 0 else ("<", ">")
        return (f"agrees if the {int(CONFIDENCE * 100)}% interval of {name} lies {ours} {self.point:g}, disagrees "
                f"if it lies {other} {self.point:g}, else inconclusive")


def interval(values: list[float], confidence: float | None = None) -> tuple[float, float] | None:
    """mean ± t((1 + confidence) / 2, n-1) · s / √n over seeds; None for fewer than 2 values. `confidence`: 95 %
    (the fixed rule), or the look's under a sequential design (the look being read, when not given)."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None
    conf = _LOOK_CONFIDENCE.get() if confidence is None else confidence
    half = float(stats.t.ppf(0.5 + conf / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean() - half), float(x.mean() + half)


def verdict_of(values: list[float], rule: Rule) -> str:
    ci = interval(values)
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    if (lo > rule.point) if rule.side > 0 else (hi < rule.point):
        return "agrees"
    if (hi < rule.point) if rule.side > 0 else (lo > rule.point):
        return "disagrees"
    return "inconclusive"


def _finite(x: float | None) -> float | None:
    """JSON-safe: NaN and infinities become None (reports write strict JSON)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _claim(name: str) -> str:
    return next((h.text for h in HEADLINE_FINDINGS if name in h.checks), _OTHER_CLAIMS.get(name, name))


_OTHER_CLAIMS = {"trajectory": "Each step of the trajectory changes accuracy the way it does in the paper."}


# -- per-seed matrices -------------------------------------------------------------------------------------------
def _labels(table: TableData) -> tuple[list[int], list[int], dict[int, str], dict[int, str]]:
    t = table.tidy
    rows = t.drop_duplicates("row_i").set_index("row_i")["row"].to_dict()
    cols = t.drop_duplicates("col_i").set_index("col_i")["col"].to_dict()
    return sorted(rows), sorted(cols), {int(k): str(v) for k, v in rows.items()}, \
        {int(k): str(v) for k, v in cols.items()}


def _frame(table: TableData, values: pd.DataFrame) -> pd.DataFrame:
    """row_i x col_i values -> a rows x cols frame with the table's labels and order, NaN where missing."""
    ri, ci, rl, cl = _labels(table)
    m = values.reindex(index=ri, columns=ci)
    m.index, m.columns = [rl[i] for i in ri], [cl[i] for i in ci]
    return m.astype(float)


def paper_matrix(table: TableData, metric: str = PRIMARY) -> pd.DataFrame:
    t = table.tidy[table.tidy["metric"] == metric]
    if t.empty:
        t = table.tidy.assign(paper=np.nan).drop_duplicates(["row_i", "col_i"])
    return _frame(table, t.pivot_table(index="row_i", columns="col_i", values="paper", aggfunc="first",
                                       dropna=False))


def seed_matrices(table: TableData, metric: str) -> dict[str, pd.DataFrame]:
    """seed -> rows x cols of one metric, holding only the positions finished on every seed (so that every seed's
    statistic reads the same positions: paired)."""
    s = table.seeds[table.seeds["metric"] == metric]
    # A position holds one recipe's seeds (tables._split_mixed), so one value per seed; two would be different
    # recipes, and a statistic must never average them as if they were one: such a position is left out.
    s = s[~s.duplicated(["row_i", "col_i", "seed"], keep=False)]
    if s.empty:
        return {}
    wide = s.pivot_table(index=["row_i", "col_i"], columns="seed", values="value", aggfunc="first")
    complete = wide.dropna()
    out = {}
    for seed in complete.columns:
        v = complete[seed].unstack("col_i") if len(complete) else pd.DataFrame()
        out[str(seed)] = _frame(table, v)
    return out


def _mean(mats: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    return sum(mats.values()) / len(mats)  # type: ignore[return-value]


def _left_out(table: TableData, metric: str) -> list[str]:
    """Positions some seed finished but not every seed did (left out of the paired statistics)."""
    s = table.seeds[table.seeds["metric"] == metric]
    if s.empty:
        return []
    n = s.groupby(["row", "col"])["seed"].nunique()
    return [" ".join(x for x in k if x) for k, c in n.items() if c < s["seed"].nunique()]


# -- the statistic engine ----------------------------------------------------------------------------------------
Stat = Callable[[str, pd.DataFrame], "float | None"]  # (seed, that seed's matrix) -> statistic


@dataclass
class Plan:
    """What a finding computes on one readout: a per-seed statistic and a detail text from the seed means."""

    statistic: Stat
    detail: str


def _summary(rule: Rule, per_seed: dict[str, float]) -> Summary:
    vals = [v for v in per_seed.values() if math.isfinite(v)]
    ci = interval(vals)
    return Summary(value=float(np.mean(vals)) if vals else None, interval=list(ci) if ci else None,
                   seeds=len(vals), per_seed=per_seed, verdict=verdict_of(vals, rule))


def _fmt_summary(s: Summary, digits: int = 1) -> str:
    if s.value is None:
        return "no seed has the cells it needs"
    text = f"{s.value:+.{digits}f}"
    if s.interval:
        lo, hi = s.interval
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text + f" over {s.seeds} seed{'s' if s.seeds != 1 else ''}"


def _run(name: str, table: TableData, statistic_name: str, rule: Rule,
         plan: Callable[[TableData, str, pd.DataFrame], Plan | str], paper_value: float | None, paper_text: str,
         digits: int = 1) -> Verdict:
    """The finding on every readout the cells recorded; the verdict from PRIMARY."""
    base = Verdict(finding=name, claim=_claim(name), readout=PRIMARY, statistic=statistic_name,
                   rule=rule.text(statistic_name), confidence=CONFIDENCE, paper=paper_text,
                   paper_value=_finite(paper_value), ours="no finished cells")
    for readout in READOUTS:
        mats = seed_matrices(table, readout)
        if not mats:
            continue
        p = plan(table, readout, _mean(mats))
        if isinstance(p, str):  # not enough data: the reason
            summary = Summary()
            text = p
        else:
            per_seed = {}
            for seed, m in mats.items():
                v = p.statistic(seed, m)
                if v is not None and math.isfinite(v):
                    per_seed[seed] = float(v)
            summary = _summary(rule, per_seed)
            text = f"{statistic_name} = {_fmt_summary(summary, digits)}" + (f"; {p.detail}" if p.detail else "")
            left = _left_out(table, readout)
            if left:
                text += f" (left out, not finished on every seed: {', '.join(left)})"
        if readout == PRIMARY:
            base.summary = summary
            base.ours = text
        else:
            summary.ours = text
            base.readouts[readout] = summary
    return base


# -- latent-dim lines (Tab. 2, Fig. 5) ---------------------------------------------------------------------------
def _orient_d(table: TableData, m: pd.DataFrame) -> pd.DataFrame | None:
    """Lines (one per tokenizer) x d labels, keeping only the lines the paper has numbers for (an extra row such
    as Tab. 2's "patch_pca per-dim" ablation is shown in the table but left out of the checks)."""
    paper = paper_matrix(table)
    if table.row_dim == "d" and table.col_dim != "d":
        m, paper = m.T, paper.T
    elif table.col_dim is None:
        if table.row_dim is None:
            return None
        m, paper = m.T, paper.T
    if paper.notna().to_numpy().any():
        m = m.loc[[i for i in m.index if i in paper.index and paper.loc[i].notna().any()]]
    return m


def _optimal_range(table: TableData, order: list[str]) -> list[str]:
    """The paper's optimal d columns: the range its lines' best d values span (Tab. 2: 16..32), or the optimum it
    states without numbers (Fig. 5: 48)."""
    ref = get_reference(table.mirrors)
    if ref and ref.best:
        best = [b for b in ref.best if b in order]
    else:
        pm = _orient_d(table, paper_matrix(table))
        best = [str(v.dropna().idxmax()) for _, v in pm.iterrows() if v.notna().sum() >= 2] if pm is not None else []
    idx = sorted(order.index(b) for b in best if b in order)
    return order[idx[0]: idx[-1] + 1] if idx else []


def _contrast(m: pd.DataFrame, inside: list[str]) -> float | None:
    """Mean over lines of (best value inside the optimal columns − best value outside them)."""
    diffs = []
    for _, v in m.iterrows():
        v = v.dropna()
        ins, out = v[[c for c in v.index if c in inside]], v[[c for c in v.index if c not in inside]]
        if len(ins) and len(out):
            diffs.append(float(ins.max() - out.max()))
    return float(np.mean(diffs)) if diffs else None


def optimal_latent_dim(table: TableData) -> Verdict:
    name = "optimal_latent_dim"
    pm = _orient_d(table, paper_matrix(table))
    order = [str(c) for c in pm.columns] if pm is not None else []
    inside = _optimal_range(table, order)
    rule = Rule(0.0, +1)
    stat_name = "best in the paper's optimal d range − best outside it"
    if pm is None or not inside:
        return _run(name, table, stat_name, rule, lambda *_: "no latent-dim axis with a paper optimum here", None, "")
    pv = _contrast(pm, inside)
    p_text = f"optimal d: {inside[0] if len(inside) == 1 else inside[0] + '-' + inside[-1]}" + \
        (f"; {stat_name} = {pv:+.1f}" if pv is not None else "")

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        m = _orient_d(t, mean)
        if m is None or _contrast(m, inside) is None:
            return "not enough data (a line needs a finished d inside and one outside the optimal range)"
        lines = m.loc[[i for i, v in m.iterrows() if v.notna().sum() >= 1]]
        best = ", ".join(f"{k} {v.dropna().idxmax()}" for k, v in lines.iterrows() if v.notna().any())
        return Plan(lambda _, s: _contrast(_orient_d(t, s), inside),  # type: ignore[arg-type]
                    f"best d on seed means: {best}")

    return _run(name, table, stat_name, rule, plan, pv, p_text)


def dip_depth(values: list[float]) -> float:
    """Deepest valley of a curve: max over interior points of min(highest to the left, highest to the right) −
    value, clipped at 0; 0 exactly when the curve rises then falls (ties allowed)."""
    deepest = 0.0
    for j in range(1, len(values) - 1):
        deepest = max(deepest, min(max(values[:j]), max(values[j + 1:])) - values[j])
    return deepest


def _dips(m: pd.DataFrame) -> dict[str, float]:
    return {str(k): dip_depth(list(v.dropna())) for k, v in m.iterrows() if v.notna().sum() >= 3}


def unimodal_in_d(table: TableData) -> Verdict:
    name = "unimodal_in_d"
    stat_name = "deepest dip in a tokenizer's accuracy-vs-d curve"
    rule = Rule(DIP_MARGIN, -1)
    pm = _orient_d(table, paper_matrix(table))
    if pm is None:
        return _run(name, table, stat_name, rule, lambda *_: "no latent-dim axis in this table", None, "")
    pd_ = _dips(pm)
    pv = max(pd_.values()) if pd_ else None
    p_text = (f"unimodal for {sum(v == 0 for v in pd_.values())} of {len(pd_)}; deepest dip {pv:.1f}"
              if pd_ else "unimodal for every tokenizer (stated)")

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        m = _orient_d(t, mean)
        if m is None or not _dips(m):
            return "not enough data (a line needs 3 finished d values)"
        dips = _dips(m)
        bad = [k for k, v in dips.items() if v > 0]
        detail = f"on seed means unimodal for {len(dips) - len(bad)} of {len(dips)}" + \
            (f" (dips: {', '.join(f'{k} {dips[k]:.1f}' for k in bad)})" if bad else "")
        return Plan(lambda _, s: max(_dips(_orient_d(t, s)).values(), default=math.nan),  # type: ignore[arg-type]
                    detail)

    return _run(name, table, stat_name, rule, plan, pv, p_text)


def _group_cells(m: pd.DataFrame, group: tuple[str, ...]) -> list[tuple[str, str]]:
    canon = {str(k): canonical_label(_TAB2, str(k), _TAB2.rows) for k in m.index}
    return [(k, str(c)) for k in m.index if canon.get(str(k)) in group for c in m.columns
            if math.isfinite(m.loc[k, c])]


def _best(m: pd.DataFrame, cells: list[tuple[str, str]]) -> tuple[str, str]:
    return max(cells, key=lambda rc: m.loc[rc[0], rc[1]])


def kl_unnecessary(table: TableData) -> Verdict:
    name = "kl_unnecessary"
    stat_name = "best KL-free cell (patch AE/PCA) − best KL cell (patch VAE/conv VAE)"
    rule = Rule(-KL_MARGIN, +1)

    def lines(t: TableData, m: pd.DataFrame) -> pd.DataFrame:
        oriented = _orient_d(t, m)  # the tokenizer lines when the table has a d axis, else the table as it is
        return oriented if oriented is not None else m

    pm = lines(table, paper_matrix(table))
    free_p, kl_p = _group_cells(pm, _FREE), _group_cells(pm, _KL)
    pv, p_text = None, ""
    if free_p and kl_p:
        f, k = _best(pm, free_p), _best(pm, kl_p)
        pv = float(pm.loc[f] - pm.loc[k])
        p_text = f"patch AE/PCA {pm.loc[f]:.1f} vs patch VAE/conv VAE {pm.loc[k]:.1f} ({pv:+.1f})"

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        m = lines(t, mean)
        free, kl = _group_cells(m, _FREE), _group_cells(m, _KL)
        if not free or not kl:
            return "not enough data (needs a finished KL-free and a KL tokenizer)"
        f, k = _best(m, free), _best(m, kl)
        return Plan(lambda _, s: float(lines(t, s).loc[f] - lines(t, s).loc[k]),
                    f"cells chosen on seed means: {' '.join(f)} {m.loc[f]:.1f} vs {' '.join(k)} {m.loc[k]:.1f}")

    return _run(name, table, stat_name, rule, plan, pv, p_text)


# -- accuracy vs FID (Tab. 1) ------------------------------------------------------------------------------------
def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _rho(acc: pd.DataFrame, fid: pd.DataFrame) -> float | None:
    a, f = acc.stack(), fid.reindex_like(acc).stack()
    both = pd.concat([a, f], axis=1, keys=["a", "f"]).dropna()
    if len(both) < 3:
        return None
    return spearman(list(both["a"]), list(both["f"]))


def fid_vs_accuracy(table: TableData) -> Verdict:
    name = "fid_vs_accuracy"
    stat_name = "Spearman(accuracy, FID) over the table's positions"
    rule = Rule(0.0, +1)
    pa, pf = paper_matrix(table, PRIMARY), paper_matrix(table, "fid")
    pv = _rho(pa, pf)
    p_text = f"Spearman(acc, FID) = {pv:+.2f} over {int((pa.notna() & pf.notna()).to_numpy().sum())}" \
        if pv is not None and math.isfinite(pv) else ""
    fids = seed_matrices(table, "fid")
    if not fids:
        return _run(name, table, stat_name, rule, lambda *_: "the cells recorded no FID beside accuracy",
                    pv, p_text, digits=2)

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        n = int((mean.notna() & _mean(fids).reindex_like(mean).notna()).to_numpy().sum())
        if n < 3:
            return f"not enough data ({n} positions with both accuracy and FID, need 3)"
        return Plan(lambda seed, s: _rho(s, fids[seed]) if seed in fids else None, f"{n} positions")

    return _run(name, table, stat_name, rule, plan, pv, p_text, digits=2)


# -- single vs multi-level noise (Sec. 4.2) ----------------------------------------------------------------------
def _levels_diff(m: pd.DataFrame) -> float | None:
    """Mean over the shared positions of (multi-level − single-level), labels matched on either dimension."""
    for frame in (m, m.T):
        canon = {str(k): canonical_label(_LEVELS, str(k), _LEVELS.rows) for k in frame.index}
        multi = [k for k, c in canon.items() if c == "multi"]
        single = [k for k, c in canon.items() if c == "single"]
        if multi and single:
            diff = (frame.loc[multi[0]] - frame.loc[single[0]]).dropna()
            if len(diff):
                return float(diff.mean())
    return None


def multi_level_helps(table: TableData) -> Verdict:
    name = "multi_level_helps"
    stat_name = "multi-level − single-level accuracy"
    rule = Rule(0.0, +1)
    pv = _levels_diff(paper_matrix(table))
    p_text = f"{pv:+.1f} pts (multi 64.5 vs single 61.5)" if pv is not None else "+3.0 pts (multi 64.5 vs single 61.5)"

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        if _levels_diff(mean) is None:
            return "not enough data (needs finished single- and multi-level cells)"
        return Plan(lambda _, s: _levels_diff(s),
                    "the single-level model probed at its own t, the only t it was trained on")

    return _run(name, table, stat_name, rule, plan, pv if pv is not None else 3.0, p_text)


# -- trajectories (Tab. 1, Tab. 3) -------------------------------------------------------------------------------
def _steps(m: pd.DataFrame) -> pd.Series:
    """One value per trajectory step (row), from its first column with a value."""
    return m.apply(lambda r: r.dropna().iloc[0] if r.notna().any() else math.nan, axis=1)


def _is_latent(recipe: Any) -> bool | None:
    """Does this step predict in latent space (target eps or z0, latent output)? None when the recipe is unknown."""
    if not isinstance(recipe, Mapping):
        return None
    obj = recipe.get("objective") or {}
    return obj.get("target") in ("eps", "z0") and obj.get("output_space", "latent") == "latent"


def _latent_steps(table: TableData) -> list[bool]:
    rows = table.tidy.drop_duplicates("row_i").sort_values("row_i")["row_i"]
    recipes = table.positions.drop_duplicates("row_i").set_index("row_i")["recipe"]
    known = [_is_latent(recipes.get(i)) for i in rows]
    # Without recipes every step but the last counts as latent prediction (in Tab. 3 the best one is the first).
    return [bool(k) for k in known] if all(k is not None for k in known) else [True] * len(known)


def image_prediction_ok(table: TableData) -> Verdict:
    name = "image_prediction_ok"
    stat_name = "last step (predict the image) − best latent-prediction step"
    rule = Rule(-IMAGE_PREDICTION_MARGIN, +1)
    if not table.trajectory:
        return _run(name, table, stat_name, rule, lambda *_: "needs a trajectory table (rows = step)", None, "")
    latent = _latent_steps(table)
    ps = _steps(paper_matrix(table))
    pv, p_text = None, ""
    cand = [i for i in range(len(ps) - 1) if latent[i] and math.isfinite(ps.iloc[i])]
    if len(ps) >= 2 and math.isfinite(ps.iloc[-1]) and cand:
        b = max(cand, key=lambda i: ps.iloc[i])
        pv = float(ps.iloc[-1] - ps.iloc[b])
        p_text = f"last step {ps.iloc[-1]:.1f} vs best latent step {ps.iloc[b]:.1f} ({pv:+.1f})"

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        s = _steps(mean)
        cand = [i for i in range(len(s) - 1) if latent[i] and math.isfinite(s.iloc[i])]
        if len(s) < 2 or not math.isfinite(s.iloc[-1]) or not cand:
            return "not enough data (needs the last step and a finished latent-prediction step)"
        b = max(cand, key=lambda i: s.iloc[i])
        return Plan(lambda _, m: float(_steps(m).iloc[-1] - _steps(m).iloc[b]),
                    f"best latent step on seed means: {s.index[b]}")

    return _run(name, table, stat_name, rule, plan, pv, p_text)


def trajectory(table: TableData) -> Verdict:
    """Every step with its own paired interval; agrees when most steps with paper numbers agree in sign."""
    name = "trajectory"
    base = Verdict(finding=name, claim=_claim(name), kind="trajectory", readout=PRIMARY,
                   statistic="change of accuracy at each step", confidence=CONFIDENCE,
                   rule="a step agrees when its interval lies on the side of 0 the paper's change lies on; "
                        "agrees when more than half of the steps agree, disagrees when more than half disagree")
    if not table.trajectory:
        base.ours = "needs a trajectory table (rows = step)"
        return base
    withpaper = [m for m in table.metrics if table.tidy.loc[table.tidy["metric"] == m, "paper"].notna().any()]
    metric = PRIMARY if PRIMARY in withpaper or not withpaper else withpaper[0]
    ps = _steps(paper_matrix(table, metric))
    pdelta = ps.diff().iloc[1:]
    fmt = lambda xs: ", ".join("?" if not math.isfinite(x) else f"{x:+.1f}" for x in xs)  # noqa: E731
    p_text = fmt(pdelta) if pdelta.notna().any() else "no paper numbers for these steps"
    mats = seed_matrices(table, metric)
    base.paper = p_text
    if not mats:
        base.ours = "no finished cells"
        return base
    deltas = {seed: _steps(m).diff().iloc[1:] for seed, m in mats.items()}
    steps: list[StepVerdict] = []
    words: list[str] = []
    for j, step in enumerate(pdelta.index):
        vals = [float(d.iloc[j]) for d in deltas.values() if math.isfinite(d.iloc[j])]
        p = float(pdelta.iloc[j])
        word = verdict_of(vals, Rule(0.0, 1 if p > 0 else -1)) if math.isfinite(p) and p != 0 else "n/a"
        ci = interval(vals)
        steps.append(StepVerdict(step=str(step), value=float(np.mean(vals)) if vals else None,
                                 interval=list(ci) if ci else None, seeds=len(vals), paper=_finite(p), verdict=word))
        words.append(word)
    judged = [w for w in words if w != "n/a"]
    agree, disagree = judged.count("agrees"), judged.count("disagrees")
    verdict = ("agrees" if agree * 2 > len(judged) else "disagrees" if disagree * 2 > len(judged)
               else "inconclusive") if judged else "inconclusive"
    base.ours = "step changes " + fmt([s.value if s.value is not None else math.nan for s in steps]) + \
        f"; {agree} of {len(judged)} agree with the paper's sign, {disagree} disagree (over {len(mats)} seeds)"
    base.metric, base.steps = metric, steps
    base.summary = Summary(seeds=len(mats), verdict=verdict)
    return base


# -- bigger / longer (Sec. 5) ------------------------------------------------------------------------------------
def _oriented(table: TableData, m: pd.DataFrame) -> pd.DataFrame:
    """The varied dimension (size or length) along the columns."""
    return m.T if table.col_dim is None or m.shape[1] < 2 else m


def _min_step(m: pd.DataFrame) -> float | None:
    gains = []
    for _, v in m.iterrows():
        v = v.dropna()
        gains += list(np.diff(v.to_numpy()))
    return float(min(gains)) if gains else None


def bigger_longer_helps(table: TableData) -> Verdict:
    name = "bigger_longer_helps"
    stat_name = "smallest gain between adjacent sizes or lengths"
    rule = Rule(0.0, +1)
    pm = _oriented(table, paper_matrix(table))
    pv = _min_step(pm)
    p_text = "; ".join(" < ".join(f"{k} {x:.1f}" for k, x in v.dropna().items()) for _, v in pm.iterrows()
                       if v.notna().sum() >= 2)

    def plan(t: TableData, readout: str, mean: pd.DataFrame) -> Plan | str:
        m = _oriented(t, mean)
        if _min_step(m) is None:
            return "not enough data (needs 2 finished sizes or lengths)"
        detail = "; ".join(" → ".join(f"{k} {x:.1f}" for k, x in v.dropna().items()) for _, v in m.iterrows()
                           if v.notna().sum() >= 2)
        return Plan(lambda _, s: _min_step(_oriented(t, s)), f"seed means {detail}")

    return _run(name, table, stat_name, rule, plan, pv, p_text)


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


# -- the regime gate and the design (REPRODUCTION.md, "The regime gate and seeds until decided") ------------------
def regime_gate(table: TableData) -> Gate:
    """Do the cells the finding compares beat the untrained nonlinear baseline? Per seed, the smallest
    probe_top1 − random_features_probe_top1 over the table's positions that recorded both on every seed; passed
    when its interval (the look's) lies above 0, failed otherwise, None when not measured (no such position, or
    fewer than 2 seeds)."""
    out = Gate(baseline=GATE_BASELINE, statistic=f"smallest {PRIMARY} − {GATE_BASELINE} over the table's positions")
    acc, rf = seed_matrices(table, PRIMARY), seed_matrices(table, GATE_BASELINE)
    seeds = [s for s in acc if s in rf]
    both: pd.DataFrame | None = None
    for s in seeds:
        ok = acc[s].notna() & rf[s].reindex_like(acc[s]).notna()
        both = ok if both is None else both & ok
    if both is None or not both.to_numpy().any():
        out.note = f"not measured: no cell recorded {GATE_BASELINE} on every seed"
        return out
    per_seed = {s: float(np.nanmin((acc[s] - rf[s].reindex_like(acc[s])).where(both).to_numpy())) for s in seeds}
    vals = list(per_seed.values())
    ci = interval(vals)
    out.value, out.interval, out.seeds, out.per_seed = float(np.mean(vals)), list(ci) if ci else None, len(vals), \
        per_seed
    out.passed = None if ci is None else bool(ci[0] > 0)
    if ci is None:
        out.note = "not measured: fewer than 2 seeds"
    return out


def decided(v: Verdict) -> bool:
    """A finding more seeds cannot change: agrees or disagrees, or out of regime with the gate's interval wholly
    below 0 (REPRODUCTION.md, Decided)."""
    if v.verdict in ("agrees", "disagrees"):
        return True
    ci = v.gate.interval if v.gate is not None else None
    return v.verdict == "out_of_regime" and ci is not None and len(ci) == 2 and ci[1] < 0


def _seed_order(table: TableData) -> list[str]:
    """The seeds the table holds, in the order they were added (numeric seeds by value)."""
    seeds = [str(x) for x in table.seeds["seed"].unique()] if len(table.seeds) else []
    return sorted(seeds, key=lambda x: (0, int(x), x) if x.lstrip("-").isdigit() else (1, 0, x))


def design_of(spec: GridSpec | Mapping[str, Any], n_seeds: int) -> Design:
    """The grid's design: the one `run --until-decided` registered in its spec, else one fixed look at the seeds
    there are (the committed rule)."""
    d = GridSpec.of(spec).design
    if d is not None:
        with contextlib.suppress(DesignError):
            return Design.from_json(d)
    return fixed_design(n_seeds)


def _gate_text(gate: Gate, rule_verdict: str | None) -> str:
    if gate.passed is None or gate.interval is None or gate.value is None:
        return f"regime gate {gate.note or 'not measured'}"
    lo, hi = gate.interval
    word = "passed" if gate.passed else f"failed, out of regime (the rule alone: {rule_verdict})"
    return f"regime gate {word}: smallest gain over random features {gate.value:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _judge(check: Callable[[TableData], Verdict], table: TableData, design: Design, n: int,
           history: tuple[int, ...]) -> Verdict:
    conf = design.confidence(n, history) if design.sequential and n >= 2 else CONFIDENCE
    with _at_confidence(conf):
        v = check(table)
        gate = regime_gate(table)
    v.confidence = conf
    v.gate = gate
    if gate.passed is False:
        v.rule_verdict = v.verdict
        v.summary.verdict = "out_of_regime"
    return v


def compute_findings(spec: GridSpec | Mapping[str, Any], table: TableData) -> list[Verdict]:
    """One verdict per finding named in the grid's `[report] findings`, in that order, each with its regime gate
    and design. Under a group-sequential design a finding is read at each look the store has had (the first
    seeds up to it) and keeps the verdict of the first look that decides it."""
    spec = GridSpec.of(spec)
    seeds = _seed_order(table)
    design = design_of(spec, len(seeds))
    looks = design.looks_at(len(seeds)) if design.sequential and len(seeds) >= 2 else (len(seeds),)
    out = []
    for name in spec.report.findings:
        check = FINDING_CHECKS.get(name)
        if check is None:
            out.append(Verdict(finding=name, claim=name, kind="unknown", ours="unknown finding", design=design))
            continue
        v = Verdict(finding=name, claim=name)
        for n in looks:
            sub = table if n == len(seeds) else dataclasses.replace(
                table, seeds=table.seeds[table.seeds["seed"].astype(str).isin(seeds[:n])])
            v = _judge(check, sub, design, n, looks)
            if decided(v):
                break
        at = v.summary.seeds if decided(v) else None
        v.design = design
        v.seeds_at_decision = at
        extra = [_gate_text(v.gate, v.rule_verdict)] if v.gate is not None else []
        if at is not None:
            extra.append(f"decided at {at} seeds")
        elif design.sequential:
            extra.append(f"undecided at {max(looks)} of at most {design.max_seeds} seeds")
        if design.sequential:
            extra.append(f"group-sequential design, looks at {', '.join(map(str, design.looks))} seeds, "
                         f"this look's interval {v.confidence * 100:.2f}%")
        v.ours = f"{v.ours}; {'; '.join(extra)}"
        out.append(v)
    return out
