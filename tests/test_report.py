"""Reports: tidy data and display frames, paper matching, finding verdicts, escaping, HTML/LaTeX structure.

Everything runs on a fake store that returns exactly what `sweepdae.store.Store.grids()` / `.cells()` return.
Most tests assert on the data (`build_report`); a few on the rendered files.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _tables import FakeStore

from sweepdae.errors import SweepdaeError
from sweepdae.report import build_report, paper_value, write_reports
from sweepdae.report.figures import figure_data, schedule_tables
from sweepdae.report.paper import PAPER, canonical_label
from sweepdae.report.render import latex_escape
from sweepdae.report.tables import build_table

EVIL = "<script>alert(1)</script> &_%"
TOK = ["conv_vae", "patch_vae", "patch_ae", "patch_pca"]
D = ["8", "16", "32", "64", "128"]
# our accuracies per tokenizer and d (None = excluded from the grid, as the paper's empty cells); seed s adds s
OURS: dict[str, list[float | None]] = {
    "conv_vae": [50, 58, 60, 55, 45], "patch_vae": [52, 59, 61, 56, None], "patch_ae": [53, 60, 62, 57, None],
    "patch_pca": [51, 60, 63, 58, 50]}
STEPS = ["DiT baseline", EVIL, "no perceptual loss", "no adversarial loss", "linear gamma^2"]


def synthetic_recipe(seed: int) -> dict[str, Any]:
    return {"data": {"name": "fashion-mnist", "image_size": 32, "train_size": 6000, "test_size": 1000},
            "tokenizer": {"name": "patch_pca", "patch_size": 8}, "noise": {"schedule": "ddpm_linear"},
            "model": {"size": "micro"}, "train": {"epochs": 2, "batch_size": 128},
            "objective": {"target": "eps", "output_space": "latent"}, "seed": seed}




def _row(key: str, label: str, status: str, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
    info = {"timings": {"train_s": 5.0, "wall_s": 12.0}, "artifacts": {}, "run_dir": f"/runs/{key}",
            "provenance": {"sweepdae": "0.1.0", "git_commit": "abcdef0123456789", "git_dirty": True,
                           "device": "cpu", "host": "box", "torch": "2.4.0", "cpu_threads": 3}}
    return {"key": key, "label": label, "status": status, "attempts": 1, "failure_class": None, "error": None,
            "recipe": synthetic_recipe(0), "info": info, **{f"metric.{k}": v for k, v in metrics.items()}, **extra}


def tab2_grid(profile: str = "smoke", ours: dict[str, list[float | None]] | None = None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """4 tokenizers x 5 dims (two excluded) x 2 seeds: conv_vae d=128 failed, patch_ae d=8 queued (both with a
    stray metric that must not show), patch_pca d=128 seed 1 never enqueued."""
    table = ours or OURS
    spec = {"name": "tokenizer_dims", "title": "Tab. 2: probe vs d", "description": "four tokenizers",
            "mirrors": "tab2", "profile": profile, "profile_description": "CPU", "seeds": [0, 1], "steps": [],
            "axes": [{"name": "tokenizer", "paths": ["tokenizer.name"], "labels": TOK},
                     {"name": "d", "paths": ["tokenizer.latent_dim"], "labels": D}],
            "report": {"rows": "tokenizer", "cols": "d", "metrics": ["probe_top1"],
                       "findings": ["optimal_latent_dim", "unimodal_in_d", "kl_unnecessary"]}, "path": "g.toml"}
    cells, rows = [], []
    for t in TOK:
        for i, d in enumerate(D):
            base = table[t][i]
            if base is None:
                continue
            for seed in (0, 1):
                key, label = f"{profile}-{t}-{d}-{seed}", f"{t} d={d} seed={seed}"
                cells.append({"key": key, "label": label, "coords": {"tokenizer": t, "d": d, "seed": str(seed)},
                              "step": None, "seed": seed})
                status = {("conv_vae", "128"): "failed", ("patch_ae", "8"): "queued"}.get((t, d), "done")
                if (t, d, seed) == ("patch_pca", "128", 1):
                    continue
                rows.append(_row(key, label, status, {"probe_top1": 99.9 if status != "done" else base + seed}))
    return {"name": "tokenizer_dims", "profile": profile, "spec": spec, "cells": cells}, rows


def traj_grid() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = {"name": "dit_to_dae", "title": f"Tab. 1 {EVIL}", "description": EVIL, "mirrors": "tab1",
            "profile": "smoke", "profile_description": "", "seeds": [0], "steps": STEPS, "axes": [],
            "report": {"rows": "step", "cols": None, "metrics": ["probe_top1", "fid"],
                       "findings": ["fid_vs_accuracy", "trajectory", "image_prediction_ok"]}, "path": "t.toml"}
    acc, fid = [40.0, 45.0, 41.0, 42.0, 47.0], [50.0, 60.0, 70.0, 80.0, 90.0]
    cells, rows = [], []
    for i, s in enumerate(STEPS):
        key = f"traj-{i}"
        cells.append({"key": key, "label": f"{s} seed=0", "coords": {"step": s, "seed": "0"}, "step": i})
        rows.append(_row(key, f"{s} seed=0", "done", {"probe_top1": acc[i], "fid": fid[i]}))
    return {"name": "dit_to_dae", "profile": "smoke", "spec": spec, "cells": cells}, rows


@pytest.fixture
def store() -> FakeStore:
    (g1, r1), (g2, r2) = tab2_grid(), traj_grid()
    return FakeStore([g1, g2], r1 + r2)


def _section(store: FakeStore, name: str) -> Any:
    return next(s for s in build_report(store).sections if s.name == name)


def _tidy(section: Any, row: str, col: str, metric: str = "probe_top1") -> pd.Series:
    t = section.table.tidy
    return t[(t["row"] == row) & (t["col"] == col) & (t["metric"] == metric)].iloc[0]


# -- tables -----------------------------------------------------------------------------------------------------
def test_mean_and_std_over_seeds(store: FakeStore) -> None:
    s = _section(store, "tokenizer_dims")
    r = _tidy(s, "conv_vae", "8")
    assert (r["mean"], r["n"], r["n_cells"]) == (50.5, 2, 2)
    assert r["std"] == pytest.approx(math.sqrt(0.5))
    assert s.table.display.loc[("conv_vae", "ours"), "d=8"] == "50.5 ± 0.7"
    one = _tidy(s, "patch_pca", "128")  # one seed done, the other never enqueued
    assert (one["mean"], one["n"], one["state"]) == (50.0, 1, "partial")
    assert s.table.display.loc[("patch_pca", "ours"), "d=128"] == "50.0*"
    assert list(s.table.display.columns) == [f"d={d}" for d in D]
    assert [r for r, k in s.table.display.index if k == "ours"] == TOK


def test_pending_and_failed_are_never_numbers(store: FakeStore, tmp_path: Path) -> None:
    s = _section(store, "tokenizer_dims")
    failed, queued = _tidy(s, "conv_vae", "128"), _tidy(s, "patch_ae", "8")
    assert failed["state"] == "failed" and math.isnan(failed["mean"])
    assert queued["state"] == "pending" and math.isnan(queued["mean"])
    assert s.table.display.loc[("conv_vae", "ours"), "d=128"] == "failed"
    assert s.table.display.loc[("patch_ae", "ours"), "d=8"] == "pending"
    assert s.table.display.loc[("patch_vae", "ours"), "d=128"] == ""  # excluded from the grid
    paths = write_reports(store, grids=None, out=tmp_path, html=True, latex=True, csv=True)
    for p in paths:
        if p.suffix in (".html", ".tex", ".csv", ".json"):
            assert "99.9" not in p.read_text(), p


def test_new_cells_absent_from_store_are_pending() -> None:
    g, _ = tab2_grid()
    s = build_report(FakeStore([g], [])).sections[0]
    assert set(s.table.tidy["state"]) == {"pending"}
    assert "unknown until a cell is queued" in s.table.scale


def test_best_per_column_in_bold(store: FakeStore) -> None:
    s = _section(store, "tokenizer_dims")
    bold = s.table.bold.xs("ours", level="source")
    best = {c: {r for r in TOK if bold.loc[r, c]} for c in bold.columns}
    assert best == {"d=8": {"patch_vae"}, "d=16": {"patch_ae", "patch_pca"}, "d=32": {"patch_pca"},
                    "d=64": {"patch_pca"}, "d=128": set()}  # d=128: a single finished value is not "best"
    assert not s.table.bold.xs("paper", level="source").to_numpy().any()
    traj = _section(store, "dit_to_dae").table
    fid_col = traj.bold["FID"].xs("ours", level="source")
    assert list(fid_col) == [True, False, False, False, False]  # FID: lower is better


def test_trajectory_deltas_and_paper_by_step_index(store: FakeStore) -> None:
    t = _section(store, "dit_to_dae").table
    acc = t.display["linear probe top-1 (%)"]
    assert acc[(STEPS[0], "ours")] == "40.0"
    assert acc[(STEPS[1], "ours")] == "45.0 (+5.0)"
    assert acc[(STEPS[2], "ours")] == "41.0 (-4.0)"
    assert acc[(STEPS[1], "paper")] == "62.5 (+5.0)"  # step 1 of Tab. 1, though our label differs
    assert t.display["FID"][(STEPS[4], "paper")] == "93.2 (+17.6)"
    assert [r for r, k in t.display.index if k == "ours"] == STEPS  # step order kept


def test_scale_line_states_our_scale_and_the_papers(store: FakeStore) -> None:
    scale = _section(store, "tokenizer_dims").table.scale
    for part in ("profile smoke", "fashion-mnist", "32 px images", "8 px patches (16 tokens)", "model micro",
                 "2 epochs", "batch 128", "Paper: ImageNet 256 px"):
        assert part in scale


def test_extra_axes_and_missing_columns() -> None:
    """A third axis not in rows/cols goes into the row label; a frame without info/recipe columns still works."""
    g, rows = tab2_grid()
    g["spec"]["axes"].append({"name": "schedule", "paths": ["noise.schedule"], "labels": ["a", "b"]})
    for c in g["cells"]:
        c["coords"]["schedule"] = "a" if c["seed"] == 0 else "b"
    frame = [{k: v for k, v in r.items() if k not in ("info", "recipe")} for r in rows]
    t = build_report(FakeStore([g], frame)).sections[0].table
    assert ("conv_vae (schedule=a)", "ours") in t.display.index
    assert t.display.loc[("conv_vae (schedule=b)", "ours"), "d=8"] == "51.0"


# -- the paper's numbers -------------------------------------------------------------------------------------------
def test_paper_values_match_labels(store: FakeStore) -> None:
    s = _section(store, "tokenizer_dims")
    assert _tidy(s, "patch_pca", "32")["paper"] == 65.1
    assert math.isnan(_tidy(s, "patch_vae", "8")["paper"]) is False
    assert paper_value("tab2", "patch_vae", "128") is None  # the paper's empty cell
    assert paper_value("tab2", "32", "patch-wise PCA") == 65.1  # either order, aliases
    assert paper_value("tab2", "patch_pca d=16", None) == 63.4  # a zipped label
    assert paper_value("tab2", "patch_pca", "32", "fid") is None
    assert paper_value("fig5", "768", None) == 23.6 and paper_value("fig5", "48", None) is None
    assert paper_value("tab1", "anything", None, "fid", step=4) == 93.2
    assert paper_value("tab3", "whatever", None, step=5) == 64.5 and paper_value("tab3", None, None, step=6) is None
    assert paper_value("model_size", "ViT-1/2L", None) == 65.0
    assert paper_value("probe_t", "10", "on") == 65.0
    assert paper_value("epochs", None, "1600") == 69.6
    assert paper_value("encoder_depth", "12", None) == 64.5
    assert paper_value("noise_levels", "single level", None) == 61.5
    assert paper_value("augmentation", "random_resized_crop", None) == 65.0
    assert paper_value("no_such_table", "a", "b") is None
    assert canonical_label(PAPER["tab2"], "Conv. VAE", PAPER["tab2"].rows) == "conv_vae"
    assert all(r.citation.startswith("Chen et al. 2024") for r in PAPER.values())


# -- findings (their rules: tests/test_findings.py) ------------------------------------------------------------
def test_findings_on_tab2_report(store: FakeStore) -> None:
    """Seed 1 is seed 0 plus one point everywhere: the paired differences have no spread, so two seeds decide."""
    f = {v["finding"]: v for v in _section(store, "tokenizer_dims").findings}
    assert f["optimal_latent_dim"]["paper"].startswith("optimal d: 16-32")
    assert {v["verdict"] for v in f.values()} == {"agrees"} and {v["seeds"] for v in f.values()} == {2}
    assert "(+0.2)" in f["kl_unnecessary"]["paper"]


def test_trajectory_findings_on_one_seed_are_inconclusive(store: FakeStore) -> None:
    f = {v["finding"]: v for v in _section(store, "dit_to_dae").findings}
    assert {v["verdict"] for v in f.values()} == {"inconclusive"}
    assert f["fid_vs_accuracy"]["value"] == pytest.approx(0.7) and f["fid_vs_accuracy"]["seeds"] == 1


def test_every_shipped_grid_matches_the_paper() -> None:
    """Each shipped grid that mirrors a paper table finds the paper's numbers through its own axis labels."""
    from sweepdae.grid import expand, load_grid
    from sweepdae.resources import resource_dir, shipped_grids

    grids, rows = [], []
    for name in shipped_grids():
        plan = expand(load_grid(resource_dir("grids") / f"{name}.toml"))
        cells = [{"key": c.key, "label": c.label, "coords": c.coords, "step": c.step} for c in plan.cells]
        grids.append({"name": plan.grid.name, "profile": plan.profile or "", "spec": plan.spec(), "cells": cells})
        rows += [_row(c.key, c.label, "done", {"probe_top1": 50.0 + i % 7, "fid": 20.0 + i}, recipe=c.recipe.to_dict())
                 for i, c in enumerate(plan.cells)]
    for s in build_report(FakeStore(grids, rows)).sections:
        if s.table.citation:
            assert s.table.tidy["paper"].notna().any(), s.name
        assert set(s.table.tidy["state"]) <= {"done", "n/a"}, s.name


def test_figure_data(store: FakeStore, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "denoise.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(png)
    g, rows = traj_grid()
    rows[0]["info"]["artifacts"]["denoising"] = str(png)
    figs = {f.kind: f for f in build_report(FakeStore([g], rows)).sections[0].figures}
    assert set(figs) == {"trajectory", "schedules", "denoising"}
    assert figs["trajectory"].data["acc"]["paper"][0] == 57.5 and figs["trajectory"].data["fid"]["mean"][4] == 90.0
    assert figs["denoising"].data["images"] == [(STEPS[0], str(png))]
    lines = [f for f in figure_data(_section(store, "tokenizer_dims").table) if f.kind == "lines"][0]
    assert lines.data["x"] == D and [s["label"] for s in lines.data["series"]] == TOK
    out = write_reports(FakeStore([g], rows), grids=None, out=tmp_path / "r", html=True, latex=False, csv=False)
    names = {p.name for p in out}
    assert {"dit-to-dae-smoke-denoising.svg", "dit-to-dae-smoke-denoising.pdf"} <= names


def _linestyles(fd: Any) -> set[str]:
    """The line styles matplotlib draws for a figure (no file written): "None" is marks without a line."""
    from matplotlib.figure import Figure

    from sweepdae.report import figures

    fig = Figure()
    {"lines": figures._plot_lines, "trajectory": figures._plot_trajectory}[fd.kind](fig, fd.data)
    return {str(line.get_linestyle()) for ax in fig.axes for line in ax.get_lines()}


def test_categorical_axes_are_points_numeric_axes_lines(store: FakeStore) -> None:
    by_d = next(f for f in figure_data(_section(store, "tokenizer_dims").table) if f.kind == "lines")
    assert by_d.data["x"] == D and not by_d.data["categorical"] and "-" in _linestyles(by_d)  # d: a quantity
    g, rows = tab2_grid()
    g["spec"]["report"] = {**g["spec"]["report"], "rows": "d", "cols": "tokenizer"}
    by_name = next(f for f in figure_data(build_report(FakeStore([g], rows)).sections[0].table) if f.kind == "lines")
    assert by_name.data["x"] == TOK and by_name.data["categorical"]
    assert _linestyles(by_name) == {"None"}  # tokenizer names: marks only, nothing joins them
    traj = next(f for f in figure_data(_section(store, "dit_to_dae").table) if f.kind == "trajectory")
    assert _linestyles(traj) == {"None"}  # trajectory steps are named changes, not a quantity


def test_probe_gain_is_a_metric_of_tables_data_and_figures(tmp_path: Path) -> None:
    """A grid that lists probe_gain after probe_top1 (issue 16): it is a column of the table (no paper number), rows
    of the CSV/JSON data, and a panel of its own, with a zero line, beside the accuracy (lines) or below it
    (trajectory)."""
    from matplotlib.figure import Figure

    from sweepdae.report import figures

    g, rows = tab2_grid()
    g["spec"]["report"] = {**g["spec"]["report"], "metrics": ["probe_top1", "probe_gain"]}
    for r in rows:
        r["metric.probe_gain"] = r["metric.probe_top1"] - 40.0
    t, traj_rows = traj_grid()
    t["spec"]["report"] = {**t["spec"]["report"], "metrics": ["probe_top1", "probe_gain", "fid"]}
    for r in traj_rows:
        r["metric.probe_gain"] = r["metric.probe_top1"] - 45.0
    sections = {s.name: s for s in build_report(FakeStore([g, t], rows + traj_rows)).sections}
    table = sections["tokenizer_dims"].table
    gain = table.tidy[(table.tidy["metric"] == "probe_gain") & (table.tidy["row"] == "patch_pca")]
    assert gain.set_index("col")["mean"].to_dict()["32"] == 63.5 - 40.0 and gain["paper"].isna().all()
    assert table.display.loc[("patch_pca", "ours"), "gain d=32"] == "23.5 ± 0.7"
    lines = next(f for f in sections["tokenizer_dims"].figures if f.kind == "lines")
    assert [p["metric"] for p in lines.data["panels"]] == ["probe_gain"] and "random-init" in lines.caption
    assert lines.data["panels"][0]["series"][3]["mean"][2] == 23.5  # patch_pca, d=32
    traj = next(f for f in sections["dit_to_dae"].figures if f.kind == "trajectory")
    assert traj.data["panels"][0]["series"][0]["mean"] == [-5.0, 0.0, -4.0, -3.0, 2.0]
    for fd, n_axes in ((lines, 2), (traj, 3)):  # trajectory: accuracy, its FID twin axis, the gain below
        fig = Figure()
        {"lines": figures._plot_lines, "trajectory": figures._plot_trajectory}[fd.kind](fig, fd.data)
        assert len(fig.axes) == n_axes
        zero = [line for ax in fig.axes for line in ax.get_lines() if list(line.get_ydata()) == [0.0, 0.0]]
        assert len(zero) == 1  # the zero line: no better than the better random-init encoder
    write_reports(FakeStore([g, t], rows + traj_rows), grids=None, out=tmp_path, html=True, latex=False, csv=True)
    data = pd.read_csv(tmp_path / "data" / "tokenizer_dims.csv")
    assert set(data["metric"]) == {"probe_top1", "probe_gain"}
    doc = json.loads((tmp_path / "data" / "dit_to_dae.json").read_text())
    assert [r["mean"] for r in doc["sections"][0]["rows"] if r["metric"] == "probe_gain"] == [-5.0, 0.0, -4.0, -3.0,
                                                                                                2.0]


def test_no_bold_in_a_column_of_equal_values() -> None:
    ours = {t: [*v[:3], 55.0, v[4]] for t, v in OURS.items()}  # d=64: every tokenizer gets the same value
    g, rows = tab2_grid(ours=ours)
    bold = build_report(FakeStore([g], rows)).sections[0].table.bold.xs("ours", level="source")
    assert not bold["d=64"].any()  # nothing stands out, so nothing is marked best
    assert bold["d=32"].sum() == 1 and bold.loc["patch_pca", "d=32"]


def test_schedule_closed_forms_match_sweepdae_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    real = {n: schedule_tables(n) for n in ("ddpm_linear", "sigma_linear", "linear_gamma2")}
    monkeypatch.setitem(sys.modules, "sweepdae.noise", None)  # the import fails -> closed forms
    for name, (gamma, sigma) in real.items():
        g2, s2 = schedule_tables(name)
        # docs/paper.md's closed forms differ from sweepdae.noise only at the grid ends (open vs closed at t = T)
        assert np.allclose(g2**2, gamma**2, atol=2e-3) and np.allclose(s2**2, sigma**2, atol=2e-3), name
    assert schedule_tables("sigma_linear")[1][-1] == pytest.approx(math.sqrt(2))


# -- rendering -----------------------------------------------------------------------------------------------------
def test_latex_escape() -> None:
    assert latex_escape(r"a&b%c$d#e_f{g}h~i^j\k") == (r"a\&b\%c\$d\#e\_f\{g\}h\textasciitilde{}i"
                                                    r"\textasciicircum{}j\textbackslash{}k")
    assert latex_escape(EVIL) == r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{} \&\_\%"
    assert latex_escape("1 ± 2") == r"1 $\pm$ 2"


def test_html_is_escaped_and_self_contained(store: FakeStore, tmp_path: Path) -> None:
    write_reports(store, grids=None, out=tmp_path, html=True, latex=False, csv=False)
    html = (tmp_path / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp;_%" in html
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    assert "<link" not in html and "@import" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert html.count('<section id="') == 3  # headline findings + two grids
    assert 'href="#tokenizer-dims-smoke"' in html and "abcdef012345 (dirty)" in html
    assert "<dt>CPU threads</dt><dd>3</dd>" in html


def _strip_escaped(tex: str) -> str:
    return re.sub(r"\\[{}]", "", tex.replace(r"\\", ""))


def test_latex_is_escaped_and_well_formed(store: FakeStore, tmp_path: Path) -> None:
    paths = write_reports(store, grids=None, out=tmp_path, html=False, latex=True, csv=False)
    doc = (tmp_path / "report.tex").read_text()
    tables = sorted((tmp_path / "tables").glob("*.tex"))
    assert [p.name for p in tables] == ["dit-to-dae-smoke.tex", "tokenizer-dims-smoke.tex"]
    assert tmp_path / "report.tex" in paths
    body = "\n".join(p.read_text() for p in tables)
    assert "<script>" not in body and "<script>" not in doc
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{} \&\_\%" in body
    assert r"\textbf{63.5} & \textbf{${}\pm{}$0.7}" in body and "99.9" not in body  # mean & ± std columns
    for tex in (doc, body):
        s = _strip_escaped(tex)
        assert s.count("{") == s.count("}")
    assert r"\documentclass{article}" in doc and r"\usepackage{booktabs,graphicx}" in doc
    for p in tables:
        assert r"\input{tables/" + p.stem + "}" in doc
        t = p.read_text()
        n = t.count(r"\begin{tabular}")
        assert n == 1 and t.count(r"\end{tabular}") == n
        assert t.count(r"\toprule") == t.count(r"\midrule") == t.count(r"\bottomrule") == n
        for fig in re.findall(r"\\includegraphics\[[^]]*\]\{([^}]*)\}", t):
            assert (tmp_path / fig).is_file()
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],  # .ci/setup --dev
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / "report.pdf").is_file()


# -- write_reports -------------------------------------------------------------------------------------------------
def test_write_reports_files_and_data(store: FakeStore, tmp_path: Path) -> None:
    paths = write_reports(store, grids=["tokenizer_dims"], out=tmp_path, html=True, latex=True, csv=True)
    rel = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert {"report.html", "report.tex", "tables/tokenizer-dims-smoke.tex", "data/tokenizer_dims.csv",
            "data/tokenizer_dims.json", "figures/tokenizer-dims-smoke-lines.svg",
            "figures/tokenizer-dims-smoke-lines.pdf"} <= rel
    assert all(p.is_file() for p in paths)
    csv = pd.read_csv(tmp_path / "data" / "tokenizer_dims.csv")
    assert len(csv) == 18 and {"row", "col", "metric", "mean", "std", "n", "status", "paper"} <= set(csv.columns)
    doc = json.loads((tmp_path / "data" / "tokenizer_dims.json").read_text())
    rec = next(r for r in doc["sections"][0]["rows"] if r["row"] == "conv_vae" and r["col"] == "128")
    assert rec["mean"] is None and rec["state"] == "failed" and rec["paper"] == 48.1
    assert not (tmp_path / "data" / "dit_to_dae.csv").exists()
    assert store.cells_calls[-1] is not None  # asks only for the grid's keys


def test_unknown_grid_lists_registered(store: FakeStore, tmp_path: Path) -> None:
    with pytest.raises(SweepdaeError, match="'nope'.*registered: dit_to_dae, tokenizer_dims"):
        write_reports(store, grids=["nope"], out=tmp_path, html=True, latex=False, csv=False)
    with pytest.raises(SweepdaeError, match="no grids are registered"):
        build_report(FakeStore([], []))


def test_profiles_are_separate_sections() -> None:
    (a, ra), (b, rb) = tab2_grid("smoke"), tab2_grid("demo")
    report = build_report(FakeStore([a, b], ra + rb), ["tokenizer_dims"])
    assert [(s.profile, s.slug) for s in report.sections] == [("demo", "tokenizer-dims-demo"),
                                                               ("smoke", "tokenizer-dims-smoke")]
    assert all(len(s.table.tidy) == 18 for s in report.sections)


def test_five_thousand_cells_build(tmp_path: Path, synthetic_grids: Any) -> None:
    grids, rows = synthetic_grids(5000)
    store = FakeStore(grids, rows)
    report = build_report(store)
    assert sum(s.n_cells for s in report.sections) == 5000
    table = report.sections[0].table
    assert table.tidy["n_cells"].sum() == 4800 and set(table.tidy["state"]) <= {"done", "partial", "pending",
                                                                                "failed"}
    paths = write_reports(store, grids=None, out=tmp_path, html=True, latex=False, csv=False)
    assert (tmp_path / "report.html") in paths


def test_a_rendered_report_names_no_folder_and_no_host(tmp_path: Path, write_grid: Any, sweepdae: Any,
                                                       cells: Any) -> None:
    """A real sweep (grid, store and runs given as absolute paths) and its report in every format: no file of the
    report holds the working folder, the checkout's folder or this machine's name; the cells' own denoising
    examples are still found, also after the runs folder moved (the store keeps run folders relative to it)."""
    import socket

    grid = write_grid(tmp_path, dims=[2], train_size=512)
    p = sweepdae(tmp_path, "run", str(grid))
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    p = sweepdae(tmp_path, "report", "--html", "--latex", "--csv", "--out", str(out), "--store",
                 f"journal:{tmp_path / 'store.journal'}")
    assert p.returncode == 0, p.stderr
    assert list(out.glob("figures/*denoising.svg")), sorted(out.rglob("*"))
    spec = json.loads((out / "data" / "tiny.json").read_text())["sections"][0]["spec"]
    assert spec["path"] == "tiny.toml"  # relative to the folder the sweep ran in
    host = re.compile(rf"(?<![\w.-]){re.escape(socket.gethostname())}(?![\w-])")
    checkout = str(Path(__file__).resolve().parent.parent)
    files = [f for f in out.rglob("*") if f.is_file()]
    assert {f.suffix for f in files} >= {".html", ".tex", ".csv", ".json", ".svg", ".pdf"}
    for f in files:
        data = f.read_bytes()
        assert str(tmp_path).encode() not in data and checkout.encode() not in data, f
        if f.suffix != ".pdf":
            text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "", data.decode())  # embedded images
            assert not host.search(text), (f, host.search(text))
    row = cells(tmp_path).iloc[0]
    assert row["info"]["run_dir"] == row["key"]
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    p = sweepdae(tmp_path, "report", "--out", "again", "--runs-dir", "moved", "--store",
                 f"journal:{tmp_path / 'store.journal'}")
    assert p.returncode == 0 and list((tmp_path / "again").glob("figures/*denoising.svg")), p.stderr


def test_upsampled_cells_are_flagged_in_the_table() -> None:
    """Fig. 5 at small scale: 64 px from 28 px Fashion-MNIST is an upsample; the table says so and the tidy data
    carries the flag; 32 px (zero-padded) is not flagged."""
    labels = ["768", "192"]
    spec = {"name": "fig5", "mirrors": "fig5", "axes": [{"name": "d", "paths": ["data.image_size"],
                                                         "labels": labels}],
            "steps": [], "report": {"rows": None, "cols": "d", "metrics": ["probe_top1"]}}
    cells = [{"key": lab, "label": f"d={lab} seed=0", "coords": {"d": lab, "seed": "0"}, "step": None}
             for lab in labels]
    rows = []
    for lab, size in zip(labels, (64, 32), strict=True):
        recipe = synthetic_recipe(0)
        recipe["data"] = {**recipe["data"], "image_size": size}
        rows.append(_row(lab, f"d={lab} seed=0", "done", {"probe_top1": 50.0}, recipe=recipe))
    t = build_table(spec, pd.DataFrame(rows), cells)
    assert dict(zip(t.tidy["col"], t.tidy["upsampled"], strict=True)) == {"768": True, "192": False}
    assert any(n.startswith("upsampled: 768") for n in t.notes), t.notes


def test_html_provenance_shows_the_measured_phases(tmp_path: Path) -> None:
    """The provenance of the HTML report gives the processes per cell and, per phase, the cells that measured it,
    the mean seconds and images decoded per cell and the largest peak RSS and GPU memory over the cells; cells that
    predate the measurements (here the whole Tab. 2 section, and two of the five trajectory cells) are "not
    recorded"."""
    (g1, r1), (g2, r2) = tab2_grid(), traj_grid()
    measured = [  # (train seconds, decoded, peak RSS, peak GPU), probe seconds
        ((10.0, 96, 500.0, None), 1.0), ((20.0, 96, 700.0, 1500.0), 2.0), ((30.0, 99, 600.0, 2500.0), 3.0)]
    for row, ((sec, dec, rss, gpu), probe_s) in zip(r2, measured, strict=False):
        phases = {"train": {"seconds": sec, "decoded": dec, "decoded_per_rank": [dec // 2] * 2, "peak_rss_mb": rss,
                            "peak_gpu_mb": gpu},
                  "probe": {"seconds": probe_s, "decoded": 10, "decoded_per_rank": [5, 5], "peak_rss_mb": 400.0,
                            "peak_gpu_mb": None}}
        row["info"] = {**row["info"], "provenance": {**row["info"]["provenance"], "world_size": 2,
                                                     "phases": phases}}
    write_reports(FakeStore([g1, g2], r1 + r2), grids=None, out=tmp_path, html=True, latex=False, csv=False)
    html = (tmp_path / "report.html").read_text()
    sections = {m.group(1): text for m, text in zip(re.finditer(r'<section id="([^"]+)"', html),
                                                    re.split(r'<section id="[^"]+"', html)[1:], strict=True)}
    tab2, traj = sections["tokenizer-dims-smoke"], sections["dit-to-dae-smoke"]
    assert "<dt>processes per cell</dt><dd>not recorded</dd>" in tab2
    assert "<dt>measured per phase</dt><dd>not recorded (" in tab2 and "<table class=\"measured\">" not in tab2
    assert "<dt>processes per cell</dt><dd>2</dd>" in traj
    assert "3 of 5 timed cells recorded their phases (the others predate the measurements: not recorded)" in traj
    assert "the mean per cell" in traj and "the maximum over the cells" in traj
    rows = re.findall(r"<tr><td>(\w+)</td>((?:<td>[^<]*</td>)+)</tr>", traj.split('<table class="measured">')[1])
    cols = {name: re.findall(r"<td>([^<]*)</td>", rest) for name, rest in rows}
    # cells, mean seconds, mean decoded (97 = (96 + 96 + 99) / 3), max RSS MiB, max GPU MiB
    assert cols == {"train": ["3", "20.0", "97", "700", "2,500"],
                    "probe": ["3", "2.0", "10", "400", "not recorded"]}
    assert list(cols) == ["train", "probe"]  # the order the phases run in
