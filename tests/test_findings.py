"""Finding verdicts (REPRODUCTION.md, "Decision rules") on synthetic multi-seed tables: a clear effect, no effect,
noise straddling the decision point, pairing by seed, margins, readouts, and what the report files carry.

The interval is checked against closed forms of Student's t quantile (1 and 2 degrees of freedom), not against
the scipy call the code makes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _tables import FakeStore, _recipe, _row, list_table

from sweepdae.metrics import METRICS
from sweepdae.report import build_report, write_reports
from sweepdae.report.findings import FINDING_CHECKS, READOUTS, compute_findings, dip_depth, interval, spearman
from sweepdae.report.tables import FINDING_METRICS, build_table

SEEDS = ("0", "1", "2")


def check(mirrors: str, finding: str, values: dict[str, list[float]], **kw: Any) -> dict[str, Any]:
    g, rows = list_table(mirrors, values, **kw)
    return FINDING_CHECKS[finding](build_table(g["spec"], pd.DataFrame(rows), g["cells"]))


# -- the interval ------------------------------------------------------------------------------------------------
def test_interval_is_student_t_against_closed_forms() -> None:
    # 1 df: t_p = tan(pi (p - 1/2)); 2 df: t_p = (2p - 1) sqrt(2 / (4 p (1 - p)))
    t1 = math.tan(math.pi * (0.975 - 0.5))
    t2 = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * 0.025))
    lo, hi = interval([1.0, 3.0])  # mean 2, s = sqrt(2)
    assert (lo, hi) == pytest.approx((2 - t1 * math.sqrt(2) / math.sqrt(2), 2 + t1 * 1.0))
    x = [1.0, 2.0, 4.0]
    m, s = sum(x) / 3, math.sqrt(sum((v - 7 / 3) ** 2 for v in x) / 2)
    assert interval(x) == pytest.approx((m - t2 * s / math.sqrt(3), m + t2 * s / math.sqrt(3)))
    assert interval([5.0]) is None and interval([]) is None


def test_dip_depth_closed_forms() -> None:
    assert dip_depth([1, 2, 3, 2, 1]) == 0 and dip_depth([3, 2, 1]) == 0 and dip_depth([1, 1, 1]) == 0
    assert dip_depth([1, 3, 2, 4]) == 1  # valley at 2 between 3 and 4
    assert dip_depth([5, 0, 2, 1, 6]) == 5  # the deepest valley: 0, between 5 and 6


def test_spearman_against_scipy() -> None:
    from scipy.stats import spearmanr

    a, b = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0], [2.0, 7.0, 1.0, 8.0, 2.0, 8.0]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


# -- clear effect, no effect, straddling ---------------------------------------------------------------------------
def test_multi_level_clear_effect_agrees() -> None:
    v = check("noise_levels", "multi_level_helps", {"single": [60.0, 61.0, 59.5], "multi": [63.0, 64.2, 62.4]})
    assert v["verdict"] == "agrees" and v["seeds"] == 3
    assert v["value"] == pytest.approx((3.0 + 3.2 + 2.9) / 3)
    assert v["interval"][0] > 0 and v["per_seed"] == pytest.approx({"0": 3.0, "1": 3.2, "2": 2.9})
    assert v["paper_value"] == pytest.approx(3.0)


def test_multi_level_reversed_effect_disagrees() -> None:
    v = check("noise_levels", "multi_level_helps", {"single": [63.0, 64.0, 62.5], "multi": [60.0, 61.2, 59.4]})
    assert v["verdict"] == "disagrees" and v["interval"][1] < 0


def test_noise_straddling_the_point_is_inconclusive() -> None:
    v = check("noise_levels", "multi_level_helps", {"single": [60.0, 60.0, 60.0], "multi": [62.0, 59.0, 60.5]})
    lo, hi = v["interval"]
    assert lo < 0 < hi and v["verdict"] == "inconclusive"


def test_no_effect_is_inconclusive_not_disagrees() -> None:
    v = check("noise_levels", "multi_level_helps", {"single": [60.0, 61.0, 62.0], "multi": [60.1, 60.9, 62.0]})
    assert v["verdict"] == "inconclusive"


def test_one_seed_decides_nothing() -> None:
    v = check("noise_levels", "multi_level_helps", {"single": [50.0], "multi": [70.0]})
    assert v["verdict"] == "inconclusive" and v["seeds"] == 1 and v["interval"] is None
    assert v["value"] == pytest.approx(20.0)


def test_differences_are_paired_by_seed() -> None:
    """A large seed effect shared by both cells: unpaired means overlap, the paired differences do not."""
    v = check("noise_levels", "multi_level_helps", {"single": [50.0, 60.0, 70.0], "multi": [51.0, 61.1, 70.9]})
    assert v["verdict"] == "agrees" and v["per_seed"] == pytest.approx({"0": 1.0, "1": 1.1, "2": 0.9})


def test_a_position_missing_on_one_seed_is_left_out_of_the_pairing() -> None:
    v = check("epochs", "bigger_longer_helps", {"400": [50.0, 51.0, 50.5], "800": [52.0, 53.0, 52.4],
                                                "1600": [99.0, 54.0, 54.1]}, missing={("1600", "0")})
    # 1600 is finished on seeds 1 and 2 only: every seed's statistic reads 400 and 800 alone
    assert v["per_seed"] == pytest.approx({"0": 2.0, "1": 2.0, "2": 1.9})
    assert "left out" in v["ours"] and "1600" in v["ours"]


# -- each finding's rule -----------------------------------------------------------------------------------------
def test_bigger_longer_uses_the_smallest_adjacent_gain() -> None:
    up = {"base": [60.0, 61.0, 60.0], "half_large": [63.0, 64.0, 63.2], "large": [66.0, 66.5, 66.1]}
    v = check("model_size", "bigger_longer_helps", up)
    assert v["verdict"] == "agrees" and v["per_seed"] == pytest.approx({"0": 3.0, "1": 2.5, "2": 2.9})
    assert v["paper_value"] == pytest.approx(65.0 - 60.3)  # paper: 60.3 < 65.0 < 70.9
    flat_top = {"base": [60.0, 61.0, 60.0], "half_large": [65.0, 66.0, 65.2], "large": [63.0, 64.5, 63.6]}
    assert check("model_size", "bigger_longer_helps", flat_top)["verdict"] == "disagrees"


def test_fid_vs_accuracy_per_seed_spearman() -> None:
    steps = ["a", "b", "c", "d"]
    acc = {s: [40.0 + i, 41.0 + i, 40.5 + i] for i, s in enumerate(steps)}
    fid = {s: [10.0 + 5 * i, 12.0 + 5 * i, 9.0 + 5 * i] for i, s in enumerate(steps)}
    v = check("tab1", "fid_vs_accuracy", acc, extra={"fid": fid})
    assert v["verdict"] == "agrees" and v["per_seed"] == pytest.approx({"0": 1.0, "1": 1.0, "2": 1.0})
    fid_down = {s: [30.0 - 5 * i + j for j in range(3)] for i, s in enumerate(steps)}
    assert check("tab1", "fid_vs_accuracy", acc, extra={"fid": fid_down})["verdict"] == "disagrees"
    v = check("tab1", "fid_vs_accuracy", acc)  # no FID recorded
    assert v["verdict"] == "inconclusive" and "no FID" in v["ours"]


def tab2(values: dict[str, dict[str, list[float]]], *, readouts: dict[str, dict[str, dict[str, list[float]]]]
         | None = None) -> Any:
    """tokenizer x d grid with the paper's Tab. 2 labels; values[tok][d][seed]."""
    toks, ds = list(values), list(next(iter(values.values())))
    n = len(next(iter(next(iter(values.values())).values())))
    spec = {"name": "tokenizer_dims", "mirrors": "tab2", "steps": [], "seeds": list(range(n)),
            "axes": [{"name": "tokenizer", "paths": ["tokenizer.name"], "labels": toks},
                     {"name": "d", "paths": ["tokenizer.latent_dim"], "labels": ds}],
            "report": {"rows": "tokenizer", "cols": "d", "metrics": ["probe_top1"],
                       "findings": ["optimal_latent_dim", "unimodal_in_d", "kl_unnecessary"]}}
    cells, rows = [], []
    for t in toks:
        for d in ds:
            for s in range(n):
                key = f"{t}-{d}-{s}"
                cells.append({"key": key, "label": key, "coords": {"tokenizer": t, "d": d, "seed": str(s)},
                              "step": None, "seed": s})
                m = {"probe_top1": values[t][d][s]}
                for name, vals in (readouts or {}).items():
                    m[name] = vals[t][d][s]
                rows.append(_row(key, m))
    return {"name": "tokenizer_dims", "profile": "test", "spec": spec, "cells": cells}, rows


def _curve(*ys: float, noise: tuple[float, ...] = (0.0, 0.3, -0.2)) -> dict[str, list[float]]:
    return {d: [y + e for e in noise] for d, y in zip(("8", "16", "32", "64"), ys, strict=True)}


def _tab2_findings(values: Any, **kw: Any) -> dict[str, dict[str, Any]]:
    g, rows = tab2(values, **kw)
    return {v["finding"]: v for v in build_report(FakeStore([g], rows)).sections[0].findings}




def test_tab2_findings_agree_on_a_clear_low_d_optimum() -> None:
    f = _tab2_findings({"conv_vae": _curve(55, 60, 59, 52), "patch_vae": _curve(56, 61, 60, 53),
                        "patch_ae": _curve(57, 62, 61, 54), "patch_pca": _curve(56, 60, 62, 55)})
    o = f["optimal_latent_dim"]
    assert o["verdict"] == "agrees" and o["paper"].startswith("optimal d: 16-32")
    # per seed: mean over lines of (best of 16, 32) - (best of 8, 64)
    assert o["per_seed"]["0"] == pytest.approx(((60 - 55) + (61 - 56) + (62 - 57) + (62 - 56)) / 4)
    assert o["paper_value"] == pytest.approx(((63.4 - 57.0) + (64.9 - 58.3) + (64.7 - 59.9) + (65.1 - 60.0)) / 4)
    u = f["unimodal_in_d"]
    assert u["verdict"] == "agrees" and u["value"] == 0  # no dip: the interval [0, 0] lies below the 1-pt margin
    k = f["kl_unnecessary"]
    # best KL-free (patch_pca d=32, 62) - best KL (patch_vae d=16, 61) = +1 on every seed
    assert k["verdict"] == "agrees" and k["per_seed"] == pytest.approx({"0": 1.0, "1": 1.0, "2": 1.0})


def test_tab2_findings_disagree_when_the_data_does() -> None:
    f = _tab2_findings({"conv_vae": _curve(60, 50, 55, 62), "patch_vae": _curve(62, 52, 57, 64),
                        "patch_ae": _curve(55, 45, 50, 57), "patch_pca": _curve(54, 44, 49, 56)})
    assert f["optimal_latent_dim"]["verdict"] == "disagrees"
    assert f["unimodal_in_d"]["verdict"] == "disagrees" and f["unimodal_in_d"]["value"] == pytest.approx(10.0)
    assert f["kl_unnecessary"]["verdict"] == "disagrees"  # KL-free 57 vs KL 64: -7, far below the -1 margin


def test_kl_non_inferiority_margin() -> None:
    """KL-free 0.5 worse on every seed: within the 1-point margin, so it 'does as well'; 1.5 worse is inconclusive
    when noisy and disagrees when not."""
    base = {"conv_vae": _curve(50, 55, 54, 51), "patch_vae": _curve(50, 60, 59, 52)}
    f = _tab2_findings({**base, "patch_ae": _curve(50, 59.5, 58, 51), "patch_pca": _curve(50, 58, 59, 51)})
    assert f["kl_unnecessary"]["verdict"] == "agrees" and f["kl_unnecessary"]["value"] == pytest.approx(-0.5)
    f = _tab2_findings({**base, "patch_ae": _curve(50, 58.5, 58, 51), "patch_pca": _curve(50, 58, 57, 51)})
    assert f["kl_unnecessary"]["verdict"] == "disagrees" and f["kl_unnecessary"]["value"] == pytest.approx(-1.5)
    noisy = {d: [v[0] + e for e in (-2.0, 0.5, 1.2)] for d, v in _curve(50, 58.5, 58, 51).items()}
    f = _tab2_findings({**base, "patch_ae": noisy, "patch_pca": _curve(50, 58, 57, 51)})
    lo, hi = f["kl_unnecessary"]["interval"]
    assert lo < -1.0 < hi and f["kl_unnecessary"]["verdict"] == "inconclusive"


def test_readouts_beside_the_probe_do_not_decide() -> None:
    values = {"conv_vae": _curve(55, 60, 59, 52), "patch_vae": _curve(56, 61, 60, 53),
              "patch_ae": _curve(57, 62, 61, 54), "patch_pca": _curve(56, 60, 62, 55)}
    # kNN says the opposite (a high-d optimum); the gain agrees
    knn = {t: _curve(50, 45, 46, 60) for t in values}
    gain = {t: {d: [x - 40 for x in v] for d, v in c.items()} for t, c in values.items()}
    f = _tab2_findings(values, readouts={"knn_top1": knn, "probe_gain": gain})
    o = f["optimal_latent_dim"]
    assert o["verdict"] == "agrees" and o["readout"] == "probe_top1"
    assert o["readouts"]["knn_top1"]["verdict"] == "disagrees"
    assert o["readouts"]["probe_gain"]["verdict"] == "agrees"
    assert o["readouts"]["probe_gain"]["per_seed"] == pytest.approx(o["per_seed"])


def test_the_pool2x2_readout_is_shown_and_never_judged(tmp_path: Path) -> None:
    """probe_top1_pool2x2 (pre-registered as shown, not judged) reaches the report's data and CSV, and no finding
    reads it: a 2x2 readout that says the opposite of the probe leaves every verdict, statistic and readout as
    they are without it."""
    assert "probe_top1_pool2x2" in METRICS and "probe_top1_pool2x2" not in (*READOUTS, *FINDING_METRICS)
    values = {"conv_vae": _curve(55, 60, 59, 52), "patch_vae": _curve(56, 61, 60, 53),
              "patch_ae": _curve(57, 62, 61, 54), "patch_pca": _curve(56, 60, 62, 55)}
    knn = {t: _curve(50, 45, 46, 60) for t in values}
    g, rows = tab2(values, readouts={"knn_top1": knn})
    without = {v["finding"]: v for v in build_report(FakeStore([g], rows)).sections[0].findings}
    opposite = {t: _curve(90, 10, 10, 95) for t in values}
    g, rows = tab2(values, readouts={"knn_top1": knn, "probe_top1_pool2x2": opposite})
    g["spec"]["report"]["metrics"] = ["probe_top1", "probe_top1_pool2x2"]
    section = build_report(FakeStore([g], rows)).sections[0]
    assert "probe_top1_pool2x2" in set(section.table.tidy["metric"])
    assert {v["finding"]: v for v in section.findings} == without
    assert all("probe_top1_pool2x2" not in v.get("readouts", {}) for v in without.values())
    write_reports(FakeStore([g], rows), grids=None, out=tmp_path, html=False, latex=False, csv=True, runs_dir=tmp_path)
    assert "probe_top1_pool2x2" in "".join(p.read_text() for p in (tmp_path / "data").glob("*.csv"))


def test_a_row_without_paper_numbers_stays_out_of_the_tokenizer_checks() -> None:
    """tokenizer_dims' "patch_pca per-dim" ablation: shown in the table, not counted in "every tokenizer"."""
    values = {"conv_vae": _curve(55, 60, 59, 52), "patch_vae": _curve(56, 61, 60, 53),
              "patch_ae": _curve(57, 62, 61, 54), "patch_pca": _curve(56, 60, 62, 55),
              "patch_pca per-dim": _curve(90, 10, 80, 95)}  # zigzag, high-d optimum
    g, rows = tab2(values)
    section = build_report(FakeStore([g], rows)).sections[0]
    assert "patch_pca per-dim" in set(section.table.tidy["row"])
    f = {v["finding"]: v for v in section.findings}
    assert f["unimodal_in_d"]["verdict"] == "agrees" and f["optimal_latent_dim"]["verdict"] == "agrees"
    assert "per-dim" not in f["optimal_latent_dim"]["ours"]


def _tab3(acc: dict[str, list[float]]) -> Any:
    steps = list(acc)
    n = len(acc[steps[0]])
    spec = {"name": "towards_dae", "mirrors": "tab3", "axes": [], "steps": steps, "seeds": list(range(n)),
            "report": {"rows": "step", "metrics": ["probe_top1"], "findings": ["trajectory", "image_prediction_ok"]}}
    cells, rows = [], []
    for i, st in enumerate(steps):
        recipe = _recipe("image" if i == len(steps) - 1 else "z0" if i else "eps",
                         "image" if i >= len(steps) - 2 else "latent")
        for s in range(n):
            key = f"{i}-{s}"
            cells.append({"key": key, "label": key, "coords": {"step": st, "seed": str(s)}, "step": i, "seed": s})
            rows.append(_row(key, {"probe_top1": acc[st][s]}, recipe=recipe))
    return build_table(spec, pd.DataFrame(rows), cells)


def test_image_prediction_margin_and_latent_steps() -> None:
    # step 4 ("img out", image output) is not latent prediction even though it is the best step
    acc = {"baseline": [60.0, 61.0, 60.5], "clean": [58.0, 59.0, 58.0], "no scaling": [59.0, 59.5, 59.0],
           "img in": [59.5, 60.0, 59.0], "img out": [70.0, 70.0, 70.0], "predict image": [59.5, 60.2, 59.9]}
    v = FINDING_CHECKS["image_prediction_ok"](_tab3(acc))
    assert v["per_seed"] == pytest.approx({"0": -0.5, "1": -0.8, "2": -0.6}) and v["verdict"] == "agrees"
    assert "baseline" in v["ours"] and v["paper_value"] == pytest.approx(64.5 - 65.1)
    acc["predict image"] = [55.0, 56.0, 55.5]
    assert FINDING_CHECKS["image_prediction_ok"](_tab3(acc))["verdict"] == "disagrees"


def test_trajectory_steps_carry_their_own_intervals() -> None:
    # paper Tab. 3 changes: -2.7, +1.2, 0.0, +0.3, +0.6
    acc = {"baseline": [60.0, 61.0, 60.5], "clean": [57.0, 58.1, 57.4], "no scaling": [58.0, 59.2, 58.5],
           "img in": [58.0, 59.0, 59.0], "img out": [57.0, 58.1, 57.3], "predict image": [58.0, 59.0, 58.4]}
    v = FINDING_CHECKS["trajectory"](_tab3(acc))
    words = [s["verdict"] for s in v["steps"]]
    assert words == ["agrees", "agrees", "n/a", "disagrees", "agrees"]
    assert v["verdict"] == "agrees" and "3 of 4 agree" in v["ours"]


def test_findings_need_data() -> None:
    g, _ = tab2({"conv_vae": _curve(55, 60, 59, 52)})
    f = build_report(FakeStore([g], [])).sections[0].findings
    assert [v["verdict"] for v in f] == ["inconclusive"] * 3 and all(v["seeds"] == 0 for v in f)


def test_report_files_carry_verdict_interval_and_seeds(tmp_path: Path) -> None:
    values = {"conv_vae": _curve(55, 60, 59, 52), "patch_vae": _curve(56, 61, 60, 53),
              "patch_ae": _curve(57, 62, 61, 54), "patch_pca": _curve(56, 60, 62, 55)}
    g, rows = tab2(values, readouts={"knn_top1": {t: _curve(50, 45, 46, 60) for t in values}})
    write_reports(FakeStore([g], rows), grids=None, out=tmp_path, html=True, latex=True, csv=True, runs_dir=tmp_path)
    doc = json.loads((tmp_path / "data" / "tokenizer_dims.json").read_text())
    f = {v["finding"]: v for v in doc["sections"][0]["findings"]}
    o = f["optimal_latent_dim"]
    assert o["verdict"] == "agrees" and o["seeds"] == 3 and len(o["interval"]) == 2 and "agrees" not in o
    assert o["readouts"]["knn_top1"]["verdict"] == "disagrees"
    html = (tmp_path / "report.html").read_text()
    lo, hi = o["interval"]
    ci = f"[{lo:+.1f}, {hi:+.1f}], 95% over 3 seeds"
    assert '<span class="agrees">agrees</span>' in html and ci in html and "kNN top-1" in html
    tex = "\n".join(p.read_text() for p in tmp_path.rglob("*.tex"))
    assert "\\textbf{agrees}" in tex and ci.replace("%", "\\%") in tex


def test_a_verdicts_json_keys_are_in_a_fixed_order() -> None:
    g, rows = list_table("tab3", {"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 5.0]},
                         findings=["multi_level_helps", "trajectory", "no_such_finding"])
    rule, traj, unknown = (v.to_json() for v in compute_findings(g["spec"], build_table(g["spec"], pd.DataFrame(rows),
                                                                                        g["cells"])))
    judged = ["gate", "design", "seeds_at_decision"]
    assert list(rule) == ["finding", "claim", "readout", "statistic", "rule", "confidence", "paper", "paper_value",
                          "value", "interval", "seeds", "per_seed", "verdict", "readouts", "ours", *judged]
    assert list(traj) == ["finding", "claim", "readout", "statistic", "confidence", "rule", "value", "interval",
                          "seeds", "per_seed", "verdict", "paper_value", "readouts", "steps", "ours", "paper", *judged]
    assert list(unknown) == ["finding", "claim", "ours", "paper", "verdict", "seeds", "interval", "readouts", *judged]
    assert json.loads(json.dumps(rule)) == rule and traj["verdict"] == "inconclusive"
