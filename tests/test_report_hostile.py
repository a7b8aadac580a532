"""Report and live view under hostile input (issue 26): no two recipes averaged into one row, no file written
outside --out, no truncated file, labels shown as typed by every renderer, one line instead of a traceback.

Stores are filled through the store's own calls (register, enqueue, claim, complete) with made-up metrics, so
nothing trains; every check runs the `sweepdae` command as a user would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sweepdae.grid import expand, load_grid
from sweepdae.runner import enqueue_cells, enqueue_plan
from sweepdae.runner import tune as tn
from sweepdae.runner.view import PlainView, RichView
from sweepdae.store import open_store

BASE = """[grid]
name = "{name}"
seeds = {seeds}

[base]
data.name = "digits"
data.image_size = 8
tokenizer.patch_size = 4
model.size = "micro"
"""
CURVE = [[1.0, 1.0, 1e-4, 1.0, 100.0], [2.0, 0.5, 1e-4, 1.0, 100.0]]  # cell.train.CURVE_FIELDS per point


def _grid(tmp: Path, name: str, body: str, seeds: str = "[0]") -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(BASE.format(name=name, seeds=seeds) + body)
    return p


def _finish(store: Any, values: Callable[[int], float]) -> None:
    """Mark every queued cell done with a made-up probe accuracy, and its training done with a loss curve."""
    i = 0
    while (claim := store.claim("test")) is not None:
        store.complete(claim, metrics={"probe_top1": values(i)}, info={})
        i += 1


def _fill(url: str, *grids: Path, values: Callable[[int], float] = lambda i: 50.0 + i) -> None:
    for path in grids:
        plan = expand(load_grid(path))
        with open_store(url) as s:
            enqueue_plan(s, plan, list(plan.cells))
            _finish(s, values)


def _rows(csv_file: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(csv_file.read_text())))


def _one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("error: "), p.stderr
    return p.stderr


def _files(root: Path) -> set[Path]:
    return {f for f in root.rglob("*") if f.is_file()}


# -- item 1: a row holds cells that differ by seed alone ----------------------------------------------------------
def test_include_cells_are_rows_of_their_own(tmp_path: Path, sweepdae: Any) -> None:
    """A grid of only [[include]] cells and no [report] rows: each include is its own row (was one row
    `ours 51.5 +- 1.3` over four different recipes)."""
    body = "".join(f'\n[[include]]\nlabel = "{lab}"\ntokenizer.latent_dim = {d}\n'
                   for lab, d in (("two", 2), ("four", 4), ("eight", 8)))
    url = f"journal:{tmp_path / 's.journal'}"
    _fill(url, _grid(tmp_path, "inc", body))
    p = sweepdae(tmp_path, "report", "--csv", "--html", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    rows = _rows(tmp_path / "out" / "data" / "inc.csv")
    assert [(r["row"], r["n"], r["mean"]) for r in rows] == [
        ("base", "1", "50.0"), ("two", "1", "51.0"), ("four", "1", "52.0"), ("eight", "1", "53.0")]


def test_includes_beside_an_axis_are_their_own_rows(tmp_path: Path, sweepdae: Any) -> None:
    """Includes beside an axis keep their labels (were one `d=nan` row averaging both includes' cells)."""
    body = ('\n[axes]\ntokenizer.latent_dim = { values = [2, 4], labels = ["8", "16"], name = "d" }\n'
            '\n[[include]]\nlabel = "pca-big"\ntokenizer.latent_dim = 8\n'
            '\n[[include]]\nlabel = "ae"\ntokenizer.name = "patch_ae"\n')
    url = f"journal:{tmp_path / 's.journal'}"
    _fill(url, _grid(tmp_path, "mix", body, seeds="[0, 1]"))
    p = sweepdae(tmp_path, "report", "--csv", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    rows = {r["row"]: (r["n"], r["mean"]) for r in _rows(tmp_path / "out" / "data" / "mix.csv")}
    assert rows == {"d=8": ("2", "50.5"), "d=16": ("2", "52.5"), "pca-big": ("2", "54.5"), "ae": ("2", "56.5")}


def _register_duplicate_labels(url: str, tmp: Path) -> None:
    """What an older sweepdae let into a store: an axis with two values under one label ("same"), so two recipes
    share a grid position (planning now refuses such a grid; the store keeps what it was given)."""
    body = ('\n[axes]\ntokenizer.latent_dim = { values = [2, 4], labels = ["a", "b"], name = "d" }\n'
            '\n[report]\nrows = "d"\nfindings = ["unimodal_in_d"]\n')
    plan = expand(load_grid(_grid(tmp, "dup", body, seeds="[0, 1]")))
    cells = [{"key": c.key, "label": f"same seed={c.seed}", "coords": {**c.coords, "d": "same"}, "step": None}
             for c in plan.cells]
    with open_store(url) as s:
        s.register_grid("dup", profile="", spec=plan.spec(), cells=cells)
        s.enqueue([{"key": c.key, "label": cc["label"], "recipe": c.recipe.to_dict(), "grid": "dup", "profile": ""}
                   for c, cc in zip(plan.cells, cells, strict=True)])
        by_key = {c.key: 40.0 if c.recipe.tokenizer.latent_dim == 2 else 80.0 for c in plan.cells}
        while (claim := s.claim("test")) is not None:
            s.complete(claim, metrics={"probe_top1": by_key[claim.key] + 0.5 * int(claim.label[-1])}, info={})


def test_cells_of_one_label_with_different_recipes_are_never_averaged(tmp_path: Path, sweepdae: Any) -> None:
    """An old store with duplicate axis labels: the two recipes are two rows, each over its own seeds, with a
    note (was one row `same 60.0 +- 23.1, n=4`)."""
    url = f"journal:{tmp_path / 's.journal'}"
    _register_duplicate_labels(url, tmp_path)
    p = sweepdae(tmp_path, "report", "--csv", "--html", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    rows = {r["row"]: (r["n"], r["mean"]) for r in _rows(tmp_path / "out" / "data" / "dup.csv")}
    assert rows == {"same [tokenizer.latent_dim=2]": ("2", "40.25"), "same [tokenizer.latent_dim=4]": ("2", "80.25")}
    assert "shown apart, not averaged: same" in (tmp_path / "out" / "report.html").read_text()
    doc = json.loads((tmp_path / "out" / "data" / "dup.json").read_text())
    assert {r["row"] for r in doc["sections"][0]["rows"]} == set(rows)


# -- item 4: nothing written outside --out -------------------------------------------------------------------------
def test_report_never_writes_outside_out(tmp_path: Path, sweepdae: Any) -> None:
    """Grids registered under path-like names (a shared store holds any name): every file of the report, in every
    format, lands under --out, each grid's data under a safe name of its own (`../../../X` was written there)."""
    names = ["../../../X", f"{tmp_path}/abs-evil", "..", "a/../../b", "x" * 300, "A", "a", "ok_name-1.2"]
    url = f"journal:{tmp_path / 'work' / 's.journal'}"
    (tmp_path / "work").mkdir()
    plan = expand(load_grid(_grid(tmp_path, "evil", "")))
    with open_store(url) as s:
        for name in names:
            s.register_grid(name, profile="", spec={**plan.spec(), "name": name},
                            cells=[{"key": c.key, "label": c.label, "coords": c.coords, "step": c.step}
                                   for c in plan.cells])
        enqueue_cells(s, list(plan.cells), grid=names[0], profile=None)
        _finish(s, lambda i: 50.0)
    before = _files(tmp_path)
    out = tmp_path / "work" / "a" / "b" / "out"
    p = sweepdae(tmp_path / "work", "report", "--csv", "--html", "--latex", "--out", str(out), "--store", url)
    assert p.returncode == 0, p.stderr
    new = _files(tmp_path) - before
    assert new and all(f.is_relative_to(out) for f in new), sorted(map(str, new))
    data = sorted((out / "data").glob("*.csv"))
    assert sorted(_rows(f)[0]["grid"] for f in data) == sorted(names)  # one file each, "A" and "a" apart
    assert (out / "data" / "ok_name-1.2.csv").is_file()  # a safe name is kept as it is


# -- item 7: one line, and every file whole or not written ---------------------------------------------------------
def test_out_naming_a_file_is_one_line(tmp_path: Path, sweepdae: Any) -> None:
    url = f"journal:{tmp_path / 's.journal'}"
    _fill(url, _grid(tmp_path, "one", ""))
    (tmp_path / "taken").write_text("mine")
    err = _one_line_error(sweepdae(tmp_path, "report", "--out", "taken", "--store", url))
    assert "--out taken: is a file" in err
    assert (tmp_path / "taken").read_text() == "mine"


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # a disk that fills up: writes past `limit` bytes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_is_one_line_and_leaves_the_last_report_whole(tmp_path: Path, sweepdae: Any) -> None:
    """A write that fails midway (here a file-size limit, as a full disk does) is one line, exit 1, and the
    report.html of the run before is still there, whole (was a traceback and a truncated report.html)."""
    url = f"journal:{tmp_path / 's.journal'}"
    body = '\n[axes]\ntokenizer.latent_dim = { values = [2, 4], labels = ["8", "16"], name = "d" }\n'
    _fill(url, _grid(tmp_path, "full", body))
    p = sweepdae(tmp_path, "report", "--html", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    page = (tmp_path / "out" / "report.html").read_bytes()
    assert len(page) > 20_000
    for limit in (2_000, 20_000):  # fails in a figure, then in report.html
        p = subprocess.run([sys.executable, "-m", "sweepdae", "report", "--html", "--csv", "--out", "out", "--store",
                            url], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                           preexec_fn=_limit_file_size(limit))
        err = _one_line_error(p)
        assert "report: cannot write out/" in err and "File too large" in err, err
        assert (tmp_path / "out" / "report.html").read_bytes() == page
        assert not [f for f in _files(tmp_path / "out") if f.name.endswith(".tmp")]


# -- item 8: labels shown as typed --------------------------------------------------------------------------------
def test_labels_are_text_in_figures_and_csv(tmp_path: Path, sweepdae: Any) -> None:
    """`$a^$` is no mathtext (report died, writing no report.html); a label that a spreadsheet would run gets a
    leading ' (OWASP), numbers and the paper's "- step" labels stay as they are."""
    labels = ["$a^$", '=HYPERLINK(""http://x"")', "@SUM(1)", "-1.5", "+x"]
    body = ('\n[axes]\ntokenizer.latent_dim = { values = [2, 3, 4, 5, 6], labels = ['
            + ", ".join(_toml(x) for x in labels) + '], name = "d" }\n'
            + 'tokenizer.name = { values = ["patch_pca", "patch_ae"], labels = ["_pca", "ae"], name = "tok" }\n'
            + '\n[report]\nrows = "tok"\ncols = "d"\n')
    url = f"journal:{tmp_path / 's.journal'}"
    _fill(url, _grid(tmp_path, "lab", body))
    p = sweepdae(tmp_path, "report", "--csv", "--html", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    assert "$a^$" in (tmp_path / "out" / "report.html").read_text()
    (lines,) = (tmp_path / "out" / "figures").glob("*-lines.svg")
    assert "_pca" in lines.read_text()  # in the legend: matplotlib leaves out a label that starts with "_"
    cols = [r["col"] for r in _rows(tmp_path / "out" / "data" / "lab.csv") if r["row"] == "ae"]
    assert cols == ["$a^$", "'=HYPERLINK(\"\"http://x\"\")", "'@SUM(1)", "-1.5", "'+x"]


def _toml(s: str) -> str:
    return "'" + s + "'"  # a TOML literal string: no escapes


def test_live_view_shows_labels_as_typed() -> None:
    """The live view: `[ours]` is shown (vanished as Rich markup), `[/]` closes the view (raised MarkupError at
    the end of `run`, skipping its summary and --report), and control characters are escaped."""
    from rich.console import Console

    con = Console(file=io.StringIO(), force_terminal=True, width=150)
    v = RichView(console=con, title="grid [/] x", total=3)
    v.cell_started("k1", "[ours] seed=0", "cpu", 1)
    v.cell_started("k2", "[/] seed=0", "cpu", 1)
    v.cell_waiting("k3", "[bold]w seed=0", "[/] training")
    v.cell_finished("k1", "done", {"probe_top1": 50.0})
    v.cell_finished("k2", "failed", {}, error="[/bold] boom \x1b[31m")
    v.close()
    shown = con.file.getvalue()  # type: ignore[attr-defined]
    for text in ("[ours] seed=0", "[/] seed=0", "grid [/] x", "[/bold] boom \\x1b[31m"):
        assert text in shown, text
    plain = io.StringIO()
    pv = PlainView(stream=plain, total=1)
    pv.cell_started("k", "a\x1b[2Jb\rc", "cpu", 1)
    pv.cell_finished("k", "failed", {}, error="x\x1b]0;t\x07")
    assert "\x1b" not in plain.getvalue() and "a\\x1b[2Jb\\x0dc" in plain.getvalue()


def test_run_with_markup_labels_finishes_its_summary(tmp_path: Path) -> None:
    """Through `sweepdae run --live`: cells labelled `[ours]` and `[/]` fail at once (an injected fault), and the
    run still ends with its summary line (the view raised at its close before)."""
    body = '\n[axes]\ntokenizer.latent_dim = { values = [2, 4], labels = ["[ours]", "[/]"], name = "d" }\n'
    grid = _grid(tmp_path, "mk", body)
    p = subprocess.run([sys.executable, "-m", "sweepdae", "run", str(grid), "--live", "--max-retries", "0",
                        "--store", f"journal:{tmp_path / 's.journal'}", "--runs-dir", str(tmp_path / "runs")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SWEEPDAE_FAULT": "crash@phase=data", "OMP_NUM_THREADS": "1",
                            "COLUMNS": "200"})
    assert "Traceback" not in p.stderr and "MarkupError" not in p.stderr, p.stderr
    assert "[ours]" in p.stderr and "[/]" in p.stderr, p.stderr
    assert "2 failed" in p.stderr, p.stderr


# -- item 10: any grid of the store; a store that only `tune` filled ------------------------------------------------
def test_report_names_a_grid_the_store_holds_but_nobody_shipped(tmp_path: Path, sweepdae: Any) -> None:
    url = f"journal:{tmp_path / 's.journal'}"
    grid = _grid(tmp_path, "ownname", "")
    _fill(url, grid)
    grid.unlink()  # the store remembers the grid; its file is elsewhere (another machine, another folder)
    p = sweepdae(tmp_path, "report", "ownname", "--csv", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "data" / "ownname.csv").is_file()
    err = _one_line_error(sweepdae(tmp_path, "report", "nosuch", "--out", "out", "--store", url))
    assert "'nosuch' is not registered" in err and "ownname" in err


def test_a_store_that_only_tune_filled_shows_its_cells_and_curves(tmp_path: Path, sweepdae: Any) -> None:
    """`sweepdae tune` (its search, with cells recorded instead of trained) then `report --html --csv`: the study,
    and also a table of every trial's cells and their training curves (the report showed the study alone)."""
    body = ('\n[axes]\ntokenizer.latent_dim = { values = [2, 4, 8], labels = ["8", "16", "32"], name = "d" }\n'
            "train.epochs = [1, 2]\n")
    g = load_grid(_grid(tmp_path, "tn", body, seeds="[0, 1]"))
    space = tn.search_space(g, None)
    url = f"journal:{tmp_path / 's.journal'}"
    with open_store(url) as s:
        def run_cells(cells: list[Any]) -> None:
            enqueue_cells(s, cells, grid=g.name, profile=space.profile)
            for c in cells:
                claim = s.claim("test", keys={c.key})
                s.complete(claim, metrics={"probe_top1": 40.0 + c.recipe.tokenizer.latent_dim + c.seed}, info={})
                lease = s.acquire_training(c.train_key, owner="test", label=c.label)
                if lease.claim is not None:
                    s.complete_training(lease.claim, info={"label": c.label, "grid": g.name, "curve": CURVE,
                                                           "curve_fields": ["step", "loss", "lr", "grad_norm",
                                                                            "images_per_s"]})

        tn.tune(s, space, trials=3, metric="probe_top1", direction="maximize", sampler="random", seed=0,
                run_cells=run_cells, say=lambda m: None)
        assert not s.grids()  # tune registers no grid: only the study knows its cells
    p = sweepdae(tmp_path, "report", "--html", "--csv", "--out", "out", "--store", url)
    assert p.returncode == 0, p.stderr
    rows = _rows(tmp_path / "out" / "data" / "tn.csv")
    assert len(rows) == 3 and {r["n"] for r in rows} == {"2"}, rows
    page = (tmp_path / "out" / "report.html").read_text()
    assert "tn: the cells of its tune trials" in page and "Training loss" in page
    assert list((tmp_path / "out" / "figures").glob("tn-*-curves.svg"))
    assert (tmp_path / "out" / "data" / "tune-tn-base-probe-top1.json").is_file()


def test_the_shipped_store_re_renders_byte_identical_csvs(tmp_path: Path, sweepdae: Any) -> None:
    """The quoting of formula-like text and the one-recipe rows change nothing in the shipped example's data: its
    step labels ("- class conditioning") and numbers are written as they were."""
    example = Path(__file__).resolve().parent.parent / "reports" / "examples" / "cpu"
    store = tmp_path / "store.journal"
    store.write_bytes((example / "store.journal").read_bytes())  # a copy: reading never touches the committed file
    p = sweepdae(tmp_path, "report", "--csv", "--out", "out", "--store", f"journal:{store}", "--runs-dir",
                 str(example / "runs"))
    assert p.returncode == 0, p.stderr
    shipped = sorted(example.glob("data/*.csv"))
    assert shipped and [f.name for f in shipped] == sorted(f.name for f in (tmp_path / "out" / "data").glob("*.csv"))
    for f in shipped:
        assert (tmp_path / "out" / "data" / f.name).read_bytes() == f.read_bytes(), f.name


def test_log_axis_ticks_are_plain_text_when_math_is_off(tmp_path: Path) -> None:
    """With mathtext off for user labels, the training-loss figure's log axis must not print its default mathtext
    tick labels as typed ("$\\mathdefault{10^{0}}$")."""
    from sweepdae.report.figures import FigureData, save_figure

    lines = [{"label": "$a^$ seed=0", "steps": [1, 2, 3, 4], "loss": [1.2, 0.8, 0.5, 0.3]}]
    fd = FigureData("curves", "curves", "Training loss", "", {"lines": lines})
    svg = save_figure(fd, tmp_path, "curves").svg.read_text()
    assert "mathdefault" not in svg and "$a^$" in svg


def test_out_may_be_any_folder_even_through_dotdot(tmp_path: Path, sweepdae: Any) -> None:
    """The guard keeps each file under --out; --out itself is the user's choice, `../out` included."""
    url = f"journal:{tmp_path / 's.journal'}"
    _fill(url, _grid(tmp_path, "g", '\n[axes]\ntokenizer.latent_dim = [2, 4]\n'))
    (tmp_path / "sub").mkdir()
    p = sweepdae(tmp_path / "sub", "report", "--csv", "--html", "--out", "../out2", "--store", url)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out2" / "data" / "g.csv").is_file() and (tmp_path / "out2" / "report.html").is_file()
