"""Render `ReportData` with Jinja2: one self-contained HTML page, and booktabs LaTeX (a table file per section
plus a compilable `report.tex` that inputs them).

Every value is escaped for its format: HTML through Jinja's autoescape, LaTeX through `finalize`, which escapes
each `((( value )))` unless it is a `TexRaw` (file paths and column specs the code builds itself).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from sweepdae.metrics import metric_info
from sweepdae.report.data import GridReport, ReportData
from sweepdae.report.figures import FigureData, RenderedFigure
from sweepdae.report.paper import PAPER_SCALE
from sweepdae.report.provenance import Provenance
from sweepdae.report.verdict import Verdict
from sweepdae.resources import resource_dir

__all__ = ["TexRaw", "latex_escape", "oneline", "render_html", "render_tex_document", "render_tex_section",
           "table_rows", "template_source", "tex_headlines", "tex_table"]

Figures = Mapping[str, list[tuple[FigureData, RenderedFigure]]]  # section slug -> its rendered figures

_TEX_CHARS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
              "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
              ">": r"\textgreater{}", "|": r"\textbar{}"}
_TEX_RE = re.compile("|".join(re.escape(c) for c in _TEX_CHARS))
_TEX_UNICODE = {"±": r"$\pm$", "–": "--", "—": "---", "−": "-", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
                "…": r"\ldots{}", "°": r"\textdegree{}", "\u00a0": "~", "→": r"$\rightarrow$", "←": r"$\leftarrow$",
                "≈": r"$\approx$", "≠": r"$\neq$", "·": r"$\cdot$", "∞": r"$\infty$", "µ": r"$\mu$", "α": r"$\alpha$",
                "β": r"$\beta$", "γ": r"$\gamma$", "σ": r"$\sigma$", "ε": r"$\epsilon$", "²": r"$^2$", "³": r"$^3$"}


class TexRaw(str):
    """A string that is already LaTeX (built by sweepdae, never from user data): not escaped again."""


def latex_escape(value: Any) -> str:
    """Text -> LaTeX that prints it: the ten specials, < > |, a few symbols; any other character beyond ASCII and
    the Latin-1 letters -> ? (pdflatex with T1/utf8 may not typeset it)."""
    text = _TEX_RE.sub(lambda m: _TEX_CHARS[m.group(0)], "" if value is None else str(value))
    out = []
    for ch in text:
        if ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ch not in "\n\t" and not (0x20 <= ord(ch) < 0x7F or 0xC0 <= ord(ch) <= 0xFF and ch not in "×÷"):
            out.append("?")  # outside ASCII and the Latin-1 letters T1 + utf8 can typeset
        else:
            out.append(ch)
    return "".join(out)


def _finalize_tex(value: Any) -> Any:
    return value if isinstance(value, TexRaw) else latex_escape(value)


def template_source(name: str) -> str:
    """A template's text: the installed package data `sweepdae.templates`, else the checkout's templates/."""
    path = resource_dir("templates") / name
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise jinja2.TemplateNotFound(name) from None


def _loader() -> jinja2.BaseLoader:
    return jinja2.FunctionLoader(lambda name: (template_source(name), None, lambda: False))


def _html_env() -> jinja2.Environment:
    return jinja2.Environment(loader=_loader(), autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def oneline(value: Any) -> str:
    """Every run of whitespace -> one space: a blank line inside a command's argument (\\section, \\caption, a
    table cell) is a \\par, which ends the argument with "Paragraph ended before ... was complete"."""
    return " ".join(("" if value is None else str(value)).split())


def _tex_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=_loader(), autoescape=False, undefined=jinja2.StrictUndefined,
                             finalize=_finalize_tex, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             block_start_string="((*", block_end_string="*))", variable_start_string="(((",
                             variable_end_string=")))", comment_start_string="((=", comment_end_string="=))")
    env.filters["oneline"] = oneline
    return env


def table_rows(section: GridReport) -> list[dict[str, Any]]:
    """The display frame as template rows: {label, kind (ours|paper), cells: [{text, bold, state}]}."""
    t = section.table
    rows = []
    for (label, kind), text, bold, state in zip(t.display.index, t.display.itertuples(index=False),
                                                t.bold.itertuples(index=False), t.state.itertuples(index=False),
                                                strict=True):
        cells = [{"text": x, "bold": bool(b), "state": s} for x, b, s in zip(text, bold, state, strict=True)]
        rows.append({"label": label or "ours", "kind": kind, "cells": cells})  # "" = a table without rows
    return rows


# -- LaTeX tables ------------------------------------------------------------------------------------------------
# A value column of the display frame becomes two LaTeX columns, `r@{}l`: the mean right-aligned, then "± std",
# the trajectory delta and the partial-seed star left-aligned after it, so the means (and the ± signs) line up
# down the column as siunitx's S columns would, with no package beyond booktabs.
_SHOWN = re.compile(r"(?P<mean>[^ ±()*]+)(?: ± (?P<std>[^ ()*]+))?(?: (?P<delta>\([^)]*\)))?(?P<star>\*)?")
_HEADER_CHARS = 16  # a header's lines hold at least this many characters: at most ~4 lines for a metric's title


def _multicolumn(span: int, body: str) -> str:
    return rf"\multicolumn{{{span}}}{{c}}{{{body}}}"


def _tex_value(text: str, *, bold: bool, state: str) -> str:
    """One display cell -> "mean & ± std (delta)*", already LaTeX (the two cells of its `r@{}l` pair)."""
    m = _SHOWN.fullmatch(text) if state in ("done", "partial", "paper") else None
    if m is None:  # empty, or a word (pending, failed, n/a): centred across the pair, in italics
        return _multicolumn(2, r"\textit{" + latex_escape(text) + "}") if text else " & "
    left = latex_escape(m["mean"])
    right = (r"${}\pm{}$" + latex_escape(m["std"]) if m["std"] else "") + \
        ("~" + latex_escape(m["delta"]) if m["delta"] else "") + ("*" if m["star"] else "")
    wrap = r"\textit{%s}" if state == "paper" else r"\textbf{%s}" if bold else "%s"
    return (wrap % left) + " & " + ((wrap % right) if right else "")


def _tex_header(text: str, span: int, chars: int = _HEADER_CHARS) -> str:
    """A header over `span` columns, wrapped onto lines of about `chars` characters (its column's widest value)
    so that a long metric name does not widen the column past its numbers (\\sweepdaehead: bottom-aligned)."""
    lines = textwrap.wrap(oneline(text), max(chars, _HEADER_CHARS), break_on_hyphens=False,
                          break_long_words=False) or [""]
    body = latex_escape(lines[0]) if len(lines) == 1 else \
        r"\sweepdaehead{" + r"\\".join(latex_escape(x) for x in lines) + "}"
    return _multicolumn(span, body)


def tex_table(section: GridReport) -> dict[str, Any]:
    """The section's display frame as LaTeX rows for tables.tex.j2: {colspec, head: [lines], rows: [lines]}.

    Several metrics over a column axis get a two-level header (the metric over its columns, a \\cmidrule under
    it, then the column labels), as the paper's tables do. A row label starts with {} so that one beginning
    with [ or * is not read as the optional argument of the \\\\ before it."""
    t = section.table
    headers = [str(h) for h in t.display.columns]
    head: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    if t.col_dim and len(t.metrics) > 1 and headers and len(headers) % len(t.metrics) == 0:
        per = len(headers) // len(t.metrics)
        for i, metric in enumerate(t.metrics):
            short = metric_info(metric).short
            chunk = headers[i * per:(i + 1) * per]
            if not all(h.startswith(short + " ") for h in chunk):
                groups = []
                break
            groups.append((short, [h[len(short) + 1:] for h in chunk]))
    row_dim = "{}" + latex_escape(oneline(t.row_dim or ""))
    widths = [max((len(str(x)) for x in t.display.iloc[:, j]), default=0) for j in range(len(headers))]
    if groups:
        top = [_tex_header(short, 2 * len(subs)) for short, subs in groups]
        rules = [rf"\cmidrule(lr){{{2 + 2 * i * len(subs)}-{1 + 2 * (i + 1) * len(subs)}}}"
                 for i, (_, subs) in enumerate(groups)]
        head.append(" & ".join(["", *top]) + r" \\ " + "".join(rules))
        labels = [sub for _, subs in groups for sub in subs]
    else:
        labels = headers
    head.append(" & ".join([row_dim, *(_tex_header(h, 2, w) for h, w in zip(labels, widths, strict=True))]) + r" \\")
    rows = []
    for r in table_rows(section):
        label = r"{}\quad\textit{paper}" if r["kind"] == "paper" else "{}" + latex_escape(oneline(r["label"]))
        cells = [_tex_value(str(c["text"]), bold=c["bold"], state="paper" if r["kind"] == "paper" else c["state"])
                 for c in r["cells"]]
        rows.append(TexRaw(" & ".join([label, *cells]) + r" \\"))
    return {"colspec": TexRaw("l" + "r@{}l" * len(headers)), "head": [TexRaw(h) for h in head], "rows": rows}


READOUT_NAMES = {"knn_top1": "kNN top-1", "probe_gain": "probe gain"}


def _interval_text(v: Mapping[str, Any]) -> str:
    """"[lo, hi], 95% over n seeds" or "n seeds" when there is no interval."""
    n = int(v.get("seeds") or 0)
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    ci = v.get("interval")
    if not ci:
        return seeds
    digits = 2 if str(v.get("finding")) == "fid_vs_accuracy" else 1
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}], {int(100 * float(v.get('confidence') or 0.95))}% over {seeds}"


def _verdict_context(v: Mapping[str, Any]) -> dict[str, Any]:
    """A finding as the templates show it: the verdict word, its interval, and the other readouts beside it."""
    readouts = [{"name": READOUT_NAMES.get(k, k), "verdict": r["verdict"], "ours": r.get("ours", ""),
                 "ci": _interval_text({**r, "finding": v.get("finding")})}
                for k, r in (v.get("readouts") or {}).items()]
    return {**v, "word": v.get("verdict", "inconclusive"), "ci": _interval_text(v), "readouts_shown": readouts}


def _section_context(s: GridReport, figs: list[tuple[FigureData, RenderedFigure]], out: Path | None) -> dict[str, Any]:
    t = s.table
    p = s.provenance
    figures = [{"title": fd.title, "caption": fd.caption, "uri": rf.data_uri,
                "pdf": TexRaw(rf.pdf.relative_to(out).as_posix() if out else rf.pdf.as_posix())} for fd, rf in figs]
    return {"slug": TexRaw(s.slug), "name": s.name, "profile": s.profile or "base", "title": s.title,
            "description": s.description, "profile_description": s.spec.profile_description,
            "citation": t.citation, "scale": t.scale, "notes": t.notes, "row_dim": t.row_dim or "",
            "headers": list(t.display.columns), "rows": table_rows(s), "n_cells": s.n_cells,
            "findings": [_verdict_context(v.to_json()) for v in s.findings], "figures": figures,
            "prov": p, "phases": [(k.removesuffix("_s"), v) for k, v in p.phases.items()],
            "measured": _measured_rows(p)}


def _measured_rows(p: Provenance) -> list[dict[str, str]]:
    """The per-phase measurements as the HTML provenance shows them: per phase, the cells that measured it, mean
    seconds and mean images decoded per cell, largest peak host RSS and GPU memory (MiB), "not recorded" where no
    cell recorded the number (a CPU cell has no GPU peak)."""

    def num(v: float | None, fmt: str) -> str:
        return "not recorded" if v is None else fmt.format(v)

    return [{"phase": name, "cells": f"{int(m.get('cells') or 0)}", "seconds": num(m.get("seconds"), "{:.1f}"),
             "decoded": num(m.get("decoded"), "{:,.0f}"), "peak_rss_mb": num(m.get("peak_rss_mb"), "{:,.0f}"),
             "peak_gpu_mb": num(m.get("peak_gpu_mb"), "{:,.0f}")} for name, m in p.measured.items()]


def render_html(report: ReportData, figures: Figures) -> str:
    """The whole report as one self-contained HTML page (inline CSS, figures as data URIs, no scripts)."""
    sections = [_section_context(s, list(figures.get(s.slug, [])), None) for s in report.sections]
    tunes = [{**vars(t), "figures": [{"title": fd.title, "caption": fd.caption, "uri": rf.data_uri}
                                     for fd, rf in figures.get(t.slug, [])]} for t in report.tunes]
    return _html_env().get_template("report.html.j2").render(
        report=report, sections=sections, paper_scale=PAPER_SCALE, tunes=tunes,
        headlines=_headline_context(report))


def render_tex_section(section: GridReport, figures: list[tuple[FigureData, RenderedFigure]], out: Path) -> str:
    """One section's booktabs table, findings and figures (paths relative to `out`, where report.tex lives)."""
    return _tex_env().get_template("tables.tex.j2").render(s=_section_context(section, figures, out),
                                                           table=tex_table(section))


def render_tex_document(report: ReportData, table_files: list[Path], out: Path) -> str:
    """A minimal compilable document that \\input's every section's table file."""
    inputs = [TexRaw(p.relative_to(out).with_suffix("").as_posix()) for p in table_files]
    return _tex_env().get_template("report.tex.j2").render(report=report, inputs=inputs, paper_scale=PAPER_SCALE,
                                                           findings=tex_headlines(report))


def _headline_verdict(s: GridReport, v: Verdict) -> dict[str, Any]:
    """A verdict under a headline: the finding and the section (grid and profile) it was found in."""
    return {"section": s.slug, "title": s.title, "profile": s.profile, **v.to_json()}


def _headline_context(report: ReportData) -> list[dict[str, Any]]:
    return [{"number": h.headline.number, "text": h.headline.text, "checks": list(h.headline.checks),
             "verdicts": [_verdict_context(_headline_verdict(s, v)) for s, v in h.verdicts]} for h in report.headlines]


def _signed(x: Any, digits: int) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return ""
    return f"{v:+.{digits}f}" if v == v else ""  # NaN -> blank


def tex_headlines(report: ReportData) -> dict[str, Any]:
    """The headline findings as report.tex's compact table: one group per headline that some grid tests (its
    claim, then one row per grid that tests it: finding, grid section, verdict, interval, seeds, the paper's value
    of the same statistic), and the numbers of the headlines that no grid of this report tests."""
    groups, untested, levels = [], [], set()
    for h in report.headlines:
        if not h.verdicts:
            untested.append(str(h.headline.number))
            continue
        rows = []
        for v in (_headline_verdict(s, f) for s, f in h.verdicts):
            digits = 2 if str(v.get("finding")) == "fid_vs_accuracy" else 1
            ci = v.get("interval")
            levels.add(int(round(100 * float(v.get("confidence") or 0.95))))
            rows.append({"finding": str(v.get("finding", "")), "slug": TexRaw(str(v.get("section", ""))),
                         "profile": v.get("profile") or "base", "word": v.get("verdict", "inconclusive"),
                         "interval": f"[{_signed(ci[0], digits)}, {_signed(ci[1], digits)}]" if ci else "",
                         "seeds": int(v.get("seeds") or 0), "paper": _signed(v.get("paper_value"), digits)})
        groups.append({"number": h.headline.number, "text": h.headline.text, "rows": rows})
    level = f"{levels.pop()}% interval" if len(levels) == 1 else "interval"
    return {"groups": groups, "untested": untested, "total": len(report.headlines), "interval_header": level}
