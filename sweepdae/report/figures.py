"""The report's figures: plain data from a grid's table first (`figure_data`), matplotlib second (`save_figure`).

Kinds: "lines" (accuracy vs the column labels per row: Tab. 2 / Fig. 5, the x axis shows the paper's d labels;
points without connecting lines when the labels are names, e.g. tokenizers, since a line would suggest an order
and values in between), "trajectory" (Fig. 6: accuracy and FID per step on two y axes, points per step: the steps
are named changes, not a quantity), "schedules" (Fig. 3: gamma_t and sigma_t per
noise schedule) and "denoising" (Fig. 8: the cells' own denoising-example PNGs). When the grid's [report] lists
`probe_gain` (GAIN_PANELS), the lines and trajectory figures get a panel of it beside (below) the accuracy, with
its zero line: what training added over the better random-init encoder. Each is written as SVG and PDF and
returned as an SVG data URI for the self-contained HTML page.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import os
import secrets
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sweepdae.errors import printable
from sweepdae.report.tables import TableData, _numeric_label, metric_info

__all__ = ["FigureData", "RenderedFigure", "figure_data", "save_figure", "schedule_tables", "write_atomic"]

MAX_DENOISING = 12  # panels in the denoising figure (one per grid position, first seed that has one)
MAX_LEGEND = 12
# Metrics drawn in a panel of their own beside the accuracy when a grid's [report] lists them (in this order).
GAIN_PANELS = ("probe_gain",)
_SCHEDULES = ("ddpm_linear", "linear_gamma2", "sigma_linear")


@dataclass
class FigureData:
    kind: str
    name: str  # file-name part, unique within the grid
    title: str
    caption: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedFigure:
    svg: Path
    pdf: Path
    data_uri: str  # data:image/svg+xml;base64,...


def _clean(xs: Any) -> list[float | None]:
    return [float(x) if x is not None and math.isfinite(float(x)) else None for x in xs]


def _series(table: TableData, metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    t = table.tidy[table.tidy["metric"] == metric]
    by_cols = table.col_dim is not None
    x_key, line_key = ("col", "row") if by_cols else ("row", "col")
    xi, li = ("col_i", "row_i") if by_cols else ("row_i", "col_i")
    x = t.sort_values(xi).drop_duplicates(xi)[x_key].tolist()
    out = []
    for _, part in t.sort_values([li, xi]).groupby(li, sort=True):
        vals = part.set_index(x_key).reindex(x)
        out.append({"label": str(part[line_key].iloc[0]) if by_cols else metric_info(metric).title,
                    "mean": _clean(vals["mean"]), "std": _clean(vals["std"]), "paper": _clean(vals["paper"])})
    return [str(v) for v in x], out


def _any(series: list[dict[str, Any]]) -> bool:
    return any(v is not None for s in series for v in s["mean"])


def _gain_panels(table: TableData, acc: str) -> list[dict[str, Any]]:
    """A panel per GAIN_PANELS metric the grid reports and some finished cell has: {metric, ylabel, series}."""
    out = []
    for m in GAIN_PANELS:
        if m in table.metrics and m != acc:
            series = _series(table, m)[1]
            if _any(series):
                label = textwrap.fill(metric_info(m).title, 28, break_on_hyphens=False)  # a narrow panel
                out.append({"metric": m, "ylabel": label, "series": series})
    return out


def _gain_caption(panels: list[dict[str, Any]], where: str) -> str:
    return "".join(f" {where}: {metric_info(p['metric']).title} (ours; 0 = no better than the better random-init "
                   "encoder)." for p in panels)


def figure_data(table: TableData) -> list[FigureData]:
    """The figures one grid gets, as plain data (no matplotlib)."""
    figs: list[FigureData] = []
    acc = "probe_top1" if "probe_top1" in table.metrics else table.metrics[0]
    cite = f" ({table.citation})" if table.citation else ""
    panels = _gain_panels(table, acc)
    if table.trajectory:
        steps, acc_s = _series(table, acc)
        data: dict[str, Any] = {"steps": steps, "acc": acc_s[0], "acc_label": metric_info(acc).title}
        if "fid" in table.metrics and acc != "fid":
            data["fid"] = _series(table, "fid")[1][0]
        if any(v is not None for s in [data["acc"], data.get("fid") or {}] for v in s.get("mean", [])):
            data["panels"] = [{**p, "series": p["series"][:1]} for p in panels]  # one series: the steps
            figs.append(FigureData("trajectory", "trajectory", "Accuracy and FID per step",
                                   f"Ours (filled marks) and the paper{cite} (crosses) at each step."
                                   + _gain_caption(panels, "Below"), data))
    else:
        x, series = _series(table, acc)
        if len(x) >= 2 and _any(series):
            dim = table.col_dim if table.col_dim is not None else table.row_dim
            categorical = not all(_numeric_label(v) for v in x)  # names (tokenizers), not a numeric axis
            caption = (f"Ours (dots, +- std over seeds) and the paper{cite} (crosses); x = the paper's labels."
                       if categorical else f"Ours (solid, +- std over seeds) and the paper{cite} (dashed); x = the "
                       "paper's labels.")
            figs.append(FigureData("lines", "lines", f"{metric_info(acc).title} vs {dim}" if dim else
                                   f"{metric_info(acc).title} per grid position",
                                   caption + _gain_caption(panels, "Right"),
                                   {"x": x, "xlabel": str(dim or ""), "ylabel": metric_info(acc).title,
                                    "series": series, "categorical": categorical, "panels": panels}))
    recipes = [r for r in table.positions["recipe"] if isinstance(r, Mapping)]
    seen = sorted({str((r.get("noise") or {}).get("schedule")) for r in recipes} - {"None"})
    if len(seen) > 1 or table.mirrors in ("tab1", "tab3"):
        names = [s for s in _SCHEDULES if s in seen or len(seen) <= 1] + [s for s in seen if s not in _SCHEDULES]
        figs.append(FigureData("schedules", "schedules", "Noise schedules (paper Fig. 3)",
                               "gamma_t (signal scale) and sigma_t (noise scale) vs t for each schedule.",
                               {"schedules": names}))
    images = [(str(r), str(p)) for r, p in zip(table.positions["row"], table.positions["denoising"], strict=True)
              if p and Path(str(p)).is_file()][:MAX_DENOISING]
    if images:
        figs.append(FigureData("denoising", "denoising", "Denoising examples (paper Fig. 8)",
                               "Each cell's own denoising examples (first finished seed per position).",
                               {"images": images}))
    return figs


def schedule_tables(name: str, num_steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """gamma_t and sigma_t of a schedule: sweepdae.noise if importable, else the closed forms (docs/paper.md#noise)."""
    try:
        from sweepdae.noise import create_schedule  # imports torch: heavy, and a report needs no torch

        s = create_schedule(name, num_steps)
        return s.gamma.numpy(), s.sigma.numpy()
    except Exception:  # torch missing or a schedule we do not know: the closed forms below
        t = np.arange(num_steps, dtype=np.float64)
        if name == "ddpm_linear":  # DDPM: beta 1e-4 -> 0.02 over 1000 steps, gamma^2 = prod(1 - beta)
            gamma2 = np.cumprod(1.0 - np.linspace(1e-4, 0.02, num_steps))
        elif name == "linear_gamma2":  # Tab. 1 last row: gamma^2 linear from 1 to 0
            gamma2 = 1.0 - (t + 1.0) / num_steps
        elif name == "sigma_linear":  # Tab. 3: no input scaling, gamma = 1, sigma linear 0 -> sqrt(2)
            return np.ones(num_steps), math.sqrt(2.0) * (t + 1.0) / num_steps
        else:
            return np.full(num_steps, np.nan), np.full(num_steps, np.nan)
        return np.sqrt(gamma2), np.sqrt(1.0 - gamma2)


def _text(label: str) -> str:
    """A user's label as figure text: control characters escaped (fonts have no glyph for them), as the terminal
    views do."""
    return printable(str(label))


def _legend(label: str) -> str:
    """A label as a legend shows it: matplotlib leaves out of the legend any label that starts with "_"."""
    label = _text(label)
    return f" {label}" if label.startswith("_") else label


def _plot_lines(fig: Any, d: dict[str, Any]) -> None:
    panels = [{"ylabel": d["ylabel"], "series": d["series"]}, *d.get("panels", [])]
    if len(panels) > 1:
        fig.set_size_inches(4.2 * len(panels), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for i, (ax, p) in enumerate(zip(axes, panels, strict=True)):
        _lines_panel(ax, d, p["series"], p["ylabel"], legend=i == 0)
        if i:  # a gain panel: 0 = no better than the better random-init encoder
            ax.axhline(0.0, color="0.4", lw=0.8)


def _lines_panel(ax: Any, d: dict[str, Any], series: list[dict[str, Any]], ylabel: str, *, legend: bool) -> None:
    xs = np.arange(len(d["x"]), dtype=float)
    categorical = bool(d.get("categorical"))
    n = len(series)
    for i, s in enumerate(series):
        color = f"C{i % 10}"
        mean = np.array([np.nan if v is None else v for v in s["mean"]], dtype=float)
        std = np.array([0.0 if v is None else v for v in s["std"]], dtype=float)
        label = _legend(s["label"]) if i < MAX_LEGEND else None
        # categorical x: points only, each series nudged sideways so series at one name do not hide each other
        at = xs + (0.3 * (i / max(1, n - 1) - 0.5) if categorical and n > 1 else 0.0)
        ax.errorbar(at, mean, yerr=std, color=color, marker="o", ms=4, capsize=2, label=label,
                    ls="none" if categorical else "-")
        paper = np.array([np.nan if v is None else v for v in s["paper"]], dtype=float)
        if np.isfinite(paper).any():
            ax.plot(at, paper, color=color, ls="none" if categorical else "--", marker="x", ms=4, alpha=0.7)
    ax.set_xticks(xs, [_text(x) for x in d["x"]], rotation=0 if len(xs) <= 8 else 90)
    ax.set_xlabel(d["xlabel"])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend and len(series) > 1:
        ax.legend(fontsize=7, ncols=2)


def _plot_trajectory(fig: Any, d: dict[str, Any]) -> None:
    panels = d.get("panels", [])
    if panels:  # the gain panels below the accuracy, on the same steps
        fig.set_size_inches(6.4, 3.6 + 1.8 * len(panels))
        ax, *below = fig.subplots(1 + len(panels), 1, sharex=True, height_ratios=[2] + [1] * len(panels))
    else:
        ax, below = fig.subplots(), []
    xs = np.arange(len(d["steps"]))

    def arr(v: list[float | None]) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in v], dtype=float)

    # the steps are named recipe changes (categorical): marks per step, no line through them
    ax.plot(xs, arr(d["acc"]["mean"]), "o", color="C0", label="accuracy (ours)")
    ax.plot(xs, arr(d["acc"]["paper"]), "x", color="C0", alpha=0.7, label="accuracy (paper)")
    ax.set_ylabel(d["acc_label"], color="C0")
    if "fid" in d:
        ax2 = ax.twinx()
        ax2.plot(xs, arr(d["fid"]["mean"]), "s", color="C3", label="FID (ours)")
        ax2.plot(xs, arr(d["fid"]["paper"]), "+", color="C3", alpha=0.7, label="FID (paper)")
        ax2.set_ylabel("FID", color="C3")
        ax2.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    for axg, p in zip(below, panels, strict=True):
        axg.axhline(0.0, color="0.4", lw=0.8)  # 0 = no better than the better random-init encoder
        axg.plot(xs, arr(p["series"][0]["mean"]), "o", color="C2")
        axg.set_ylabel(p["ylabel"], fontsize=7)
        axg.grid(alpha=0.3)
    (below[-1] if below else ax).set_xticks(xs, [_text(x) for x in d["steps"]], rotation=25, ha="right", fontsize=7)


def _plot_schedules(fig: Any, d: dict[str, Any]) -> None:
    ax_g, ax_s = fig.subplots(1, 2)
    for i, name in enumerate(d["schedules"]):
        gamma, sigma = schedule_tables(name)
        t = np.arange(len(gamma))
        ax_g.plot(t, gamma, color=f"C{i}", label=name)
        ax_s.plot(t, sigma, color=f"C{i}", label=name)
    ax_g.set_title("gamma_t", fontsize=9)
    ax_s.set_title("sigma_t", fontsize=9)
    for ax in (ax_g, ax_s):
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    ax_g.legend(fontsize=7)


def _plot_denoising(fig: Any, d: dict[str, Any]) -> None:
    import matplotlib.image as mpimg

    images = d["images"]
    n = len(images)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig.set_size_inches(3.2 * cols, 2.4 * rows)
    for i, (label, path) in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        try:
            ax.imshow(mpimg.imread(path))
        except (OSError, ValueError, SyntaxError):
            ax.text(0.5, 0.5, "unreadable image", ha="center", va="center")
        ax.set_title(_text(label), fontsize=7)
        ax.axis("off")


MAX_CURVES = 40  # trainings drawn in one loss-curve figure


def curve_figure(curves: list[dict[str, Any]]) -> FigureData | None:
    """The loss curves of a grid's trainings (`Store.training_curves` entries), one line each, labelled by the cell
    that trained it; None when the store keeps none (trainings recorded before curves were)."""
    lines = []
    for c in sorted(curves, key=lambda c: str(c.get("label")))[:MAX_CURVES]:
        fields = list(c.get("fields") or [])
        if "step" not in fields or "loss" not in fields:
            continue
        i, j = fields.index("step"), fields.index("loss")
        pts = [(p[i], p[j]) for p in c["points"] if p[i] is not None and p[j] is not None]
        if pts:
            lines.append({"label": str(c.get("label") or "?"), "steps": [float(a) for a, _ in pts],
                          "loss": [float(b) for _, b in pts]})
    if not lines:
        return None
    more = f" (the first {MAX_CURVES} of {len(curves)})" if len(curves) > MAX_CURVES else ""
    return FigureData("curves", "curves", "Training loss", f"The training loss of each training{more}, labelled by "
                      "the cell that trained it (about 200 points each, from the store).", {"lines": lines})


def _plot_curves(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for line in d["lines"]:
        ax.plot(line["steps"], line["loss"], lw=0.9, label=_legend(line["label"]))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    # The default log-axis labels are mathtext ("$\\mathdefault{10^{0}}$"), which figures render as typed since user
    # labels must not be parsed as maths: plain-text tick labels instead
    from matplotlib.ticker import LogFormatter  # matplotlib is imported lazily (an optional, heavy dependency)

    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    if len(d["lines"]) <= MAX_LEGEND:
        ax.legend(fontsize=6, frameon=False)


def tune_history_figure(name: str, metric: str, direction: str, history: list[dict[str, Any]]) -> FigureData:
    return FigureData("tune_history", "history", "Optimisation history",
                      f"{metric_info(metric).title} of each complete trial (dots) and the best so far (line; "
                      f"{direction}).", {"history": history, "ylabel": metric_info(metric).title})


def _plot_tune_history(fig: Any, d: dict[str, Any]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    xs = [h["number"] for h in d["history"]]
    ax.plot(xs, [h["value"] for h in d["history"]], "o", ms=4, label="trial")
    ax.step(xs, [h["best"] for h in d["history"]], where="post", lw=1.2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(d["ylabel"])
    ax.legend(fontsize=7, frameon=False)


_PLOTS = {"lines": _plot_lines, "trajectory": _plot_trajectory, "schedules": _plot_schedules,
          "denoising": _plot_denoising, "curves": _plot_curves, "tune_history": _plot_tune_history}


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a report file whole or not at all: into a temporary file beside it, then renamed over it, so a full
    disk or a kill mid-write leaves the previous file (or none), never a truncated one."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name[:40]}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's mode, as a plain write gets
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename:  # a failed write names no file: name the one it was for
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def save_figure(fd: FigureData, folder: Path, stem: str) -> RenderedFigure:
    """Render one figure to folder/stem.svg and .pdf (deterministic bytes) and return the SVG as a data URI."""
    import matplotlib
    from matplotlib.figure import Figure  # a bare Figure needs no pyplot and no GUI backend

    folder.mkdir(parents=True, exist_ok=True)
    # Labels are the user's text: "$a^$" must show as typed, not be parsed (and fail) as mathtext
    with matplotlib.rc_context({"svg.hashsalt": "sweepdae", "font.size": 8, "text.parse_math": False}):
        fig = Figure(figsize=(6.4, 3.6) if fd.kind != "schedules" else (7.0, 3.0), layout="constrained")
        _PLOTS[fd.kind](fig, fd.data)
        svg_buf, pdf_buf = io.BytesIO(), io.BytesIO()
        fig.savefig(svg_buf, format="svg", metadata={"Date": None})
        fig.savefig(pdf_buf, format="pdf", metadata={"CreationDate": None, "ModDate": None})
        svg, pdf = folder / f"{stem}.svg", folder / f"{stem}.pdf"
        write_atomic(svg, svg_buf.getvalue())
        write_atomic(pdf, pdf_buf.getvalue())
    return RenderedFigure(svg=svg, pdf=pdf,
                          data_uri="data:image/svg+xml;base64," + base64.b64encode(svg_buf.getvalue()).decode())
