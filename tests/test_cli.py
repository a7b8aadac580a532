"""The command line surface: usage errors of the installed console script, input echoed in errors escaped, flags
shown as flags, and every command handing its options to the library function (launch mocked: nothing trains)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sweepdae.cli import app
from sweepdae.errors import GridError, SweepdaeError, printable
from sweepdae.grid import expand, parse_grid
from sweepdae.runner import RunSummary
from sweepdae.store import open_store

# the console script pip installed beside this interpreter: what a user runs, with whatever typer/click is there
SCRIPT = shutil.which("sweepdae", path=str(Path(sys.executable).parent))

GRID = """
[grid]
name = "cli"
seeds = [0]

[base]
data.name = "digits"
data.image_size = 8
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4
model.size = "micro"

[axes]
tokenizer.latent_dim = [2, 4]
"""


def installed(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `sweepdae` with ARGS; undecodable output bytes become lone surrogates (never printable)."""
    assert SCRIPT, f"no sweepdae console script beside {sys.executable}: pip install -e . first"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    return subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, timeout=120, encoding="utf-8",
                          errors="surrogateescape", env={**env, "COLUMNS": "200"})


def unprintable(text: str) -> list[str]:
    """Characters a terminal could act on: everything `str.isprintable` rejects except the newlines of the output."""
    return [ch for ch in text if ch != "\n" and not ch.isprintable()]


# ------------------------------------------------------------------------------------------------- usage errors
USAGE_ERRORS = {
    "unknown command": (["bogus"], "No such command"),
    "missing argument": (["plan"], "Missing argument"),
    "unknown option": (["plan", "quickstart", "--bogus"], "No such option: --bogus"),
    "option without value": (["report", "--out"], "'--out' requires an argument"),
    "bad value": (["run", "quickstart", "--gpus-per-cell", "abc"], "'--gpus-per-cell'"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors_of_the_installed_script_are_usage_and_error_exit_2(tmp_path: Path, case: str) -> None:
    args, expected = USAGE_ERRORS[case]
    p = installed(*args, cwd=tmp_path)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: sweepdae"), p.stderr  # Click's usage line, naming the (sub)command
    assert lines[-1].startswith("Error: ") and expected in lines[-1], p.stderr
    assert len(lines) <= 4 and p.stdout == "", p.stderr
    assert not list(tmp_path.iterdir())  # nothing written: no store, no runs folder


def test_usage_error_echoing_input_is_escaped(tmp_path: Path) -> None:
    p = installed("plan", "quickstart", "--bo\x1e\x1b[2Jgus", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    # (click 8.1 drops the ANSI sequence itself when it writes to a file; newer typer's copy keeps it: escaped)
    assert "No such option: --bo\\x1e" in p.stderr and not unprintable(p.stderr), p.stderr


# ---------------------------------------------------------------------------------- escaped input in every error
OPTION_ERRORS = {  # args (after the shipped grid `quickstart` where a grid is needed), what the line names
    "launcher": (["run", "quickstart", "--launcher", "fo\x1b[31mrk"], "fo\\x1b[31mrk"),
    "gpus": (["run", "quickstart", "--gpus", "0,\x9b1"], "0,\\x9b1"),
    "only": (["run", "quickstart", "--dry-run", "--only", "\x1b]0;pwned\x07"], "\\x1b]0;pwned\\x07"),
    "profile": (["plan", "quickstart", "--profile", "smo\x7fke"], "smo\\x7fke"),
    "store": (["status", "--store", "journal:no\x1e\u202ewhere.journal"], "no\\x1e\\u202ewhere"),
    "grid name": (["plan", "evil\x1b[8m\u2028.toml"], "evil\\x1b[8m\\u2028.toml"),
}


@pytest.mark.parametrize("case", sorted(OPTION_ERRORS))
def test_errors_escape_control_characters_of_cli_options(tmp_path: Path, case: str) -> None:
    args, shown = OPTION_ERRORS[case]
    p = installed(*args, cwd=tmp_path)
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: ") and p.stderr.endswith("\n") and p.stderr.count("\n") == 1, p.stderr
    assert not unprintable(p.stderr), p.stderr
    assert shown in p.stderr, p.stderr


def test_a_key_holding_a_record_separator_gives_one_escaped_line(tmp_path: Path) -> None:
    """The case that made the default suite flaky: a quoted key holding U+001E (which str.splitlines() splits at)
    and ESC, echoed raw in the `file:line: key` prefix."""
    text = GRID + '"model.\\u001e\\u001b[31msize" = "small"\n'
    with pytest.raises(GridError) as exc:
        parse_grid(text, "g\x1e.toml")
    msg = str(exc.value)
    assert msg.isprintable() and len(msg.splitlines()) == 1, msg
    assert msg.startswith("g\\x1e.toml:") and "model.\\x1e\\x1b[31msize" in msg, msg
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    for args in (["plan", str(grid)], ["run", str(grid), "--dry-run"]):
        p = installed(*args, cwd=tmp_path)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
        assert "\\x1e\\x1b[31msize" in p.stderr and not unprintable(p.stderr), p.stderr


def test_printable_escapes_exactly_the_unprintable() -> None:
    assert printable("plain é 名 ✓ [red]") == "plain é 名 ✓ [red]"
    assert printable("\x1e\x1b\x7f\x85\x9b\u202e\u2028\ufeff\U000e0001\n\t") == (
        "\\x1e\\x1b\\x7f\\x85\\x9b\\u202e\\u2028\\ufeff\\U000e0001\\x0a\\x09")
    assert printable(printable("a\x1bb")) == printable("a\x1bb")  # idempotent


NASTY = st.sampled_from(["\x1e", "\x1b[31m", "\x1b]0;owned\x07", "\x7f", "\x85", "\x9b", "\u202e", "\u2066", "\u2028",
                         "\x00", "\t", "\r", "\n", "\x08", "\ufeff"])
nasty_text = st.lists(st.one_of(NASTY, NASTY, st.characters(codec="utf-8"),
                                st.sampled_from(["model", "size", ".", "a", "[", "]"])),
                      min_size=1, max_size=8).map("".join)


def toml_str(s: str) -> str:
    """A TOML basic string holding `s` exactly: the characters TOML refuses raw are written as \\uXXXX escapes."""
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or c in '\x7f"\\' else c for c in s) + '"'


PLACES = [  # (section, lines): where the drawn text lands, `{k}` as a quoted key and `{v}` as a string value
    ("[grid]", "title = {v}"), ("[grid]", "default_profile = {v}"), ("[grid]", "{k} = 1"),
    ("[base]", "{k} = 1"), ("[base]", "model.{k} = 1"), ("[base]", "tokenizer.{k} = {v}"),
    ("[base]", "noise.schedule = {v}"), ("[base]", "objective.target = {v}"),
    ("[axes]", "noise.schedule = [{v}]"), ("[axes]", 'train.epochs = {{ values = [1], labels = [{v}], name = {v} }}'),
    ("[axes]", "{k} = [1, 2]"), ("[profiles.{k}]", "train.epochs = {v}"), ("[profiles.x]", "axes = {{ {k} = [1] }}"),
    ("[profiles.x]", "{k} = {v}"), ("[report]", "rows = {v}"), ("[report]", "metrics = [{v}]"), ("[{k}]", ""),
    ("[[include]]", "label = {v}\n{k} = 2"), ("[[include]]", "label = {v}\ntokenizer.latent_dim = 3"),
    ("[[exclude]]", "{k} = {v}"), ("[[trajectory]]", "label = {v}\nset = {{ {k} = 1 }}"),
    ("[[zip]]", 'train.epochs = [1, 2]\nlabels = [{v}, "b"]\nname = {v}'),
]


@st.composite
def nasty_grid(draw: st.DrawFn) -> str:
    """GRID with 1-3 places holding drawn text with control and other non-printable characters."""
    sections: dict[str, list[str]] = {}
    for block in GRID.strip().split("\n\n"):
        head, *lines = block.splitlines()
        sections[head] = lines
    arrays: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        head, lines = draw(st.sampled_from(PLACES))
        head = head.format(k=toml_str(draw(nasty_text)))
        lines = lines.format(k=toml_str(draw(nasty_text)), v=toml_str(draw(nasty_text)))
        if head.startswith("[["):
            arrays.append(f"{head}\n{lines}")
        else:
            sections.setdefault(head, []).append(lines)
    return "\n\n".join("\n".join([h, *ls]) for h, ls in sections.items()) + "\n\n" + "\n\n".join(arrays) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=nasty_grid())
def test_grid_errors_are_printable_for_any_key_or_value(text: str) -> None:
    try:
        expand(parse_grid(text, "nasty.toml"))
    except GridError as e:
        msg = str(e)
        assert msg.isprintable(), msg  # no newline either: one line
        assert msg.startswith("nasty.toml"), msg


# 8 installed runs (~1 s each); the 300 examples of test_grid_errors_are_printable_for_any_key_or_value above
# check the messages themselves in-process
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=nasty_grid())
def test_installed_plan_prints_no_control_characters(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "nasty.toml"
        grid.write_text(text, encoding="utf-8")
        p = installed("plan", str(grid), cwd=Path(tmp))
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 2), (p.returncode, p.stderr)
    assert not unprintable(p.stderr) and not unprintable(p.stdout), (p.stderr, p.stdout)
    if p.returncode == 2:
        assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr


# ------------------------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize("command", [[], ["plan"], ["status"], ["run"], ["worker"], ["report"]])
def test_help_shows_flags_as_flags(command: list[str]) -> None:
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output and "BOOLEAN" not in r.output, r.output
    assert "--help" in r.output
    if command == ["run"]:
        assert "--fail-fast" in r.output and "--dry-run" in r.output and "--gpus-per-cell" in r.output


# ------------------------------------------------------------ each command -> its library call, with the arguments
@pytest.fixture
def grid(tmp_path: Path) -> Path:
    p = tmp_path / "cli.toml"
    p.write_text(GRID)
    return p


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"journal:{tmp_path / 'store.journal'}"
    open_store(url).close()
    return url


def test_run_hands_its_options_to_run_plan(tmp_path: Path, grid: Path, store_url: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_plan(store: Any, plan: Any, **kw: Any) -> RunSummary:
        calls.append({"grid": plan.grid.name, "cells": len(plan.cells), **kw})
        return RunSummary(total=1, cached=0, done=[plan.cells[0].key], failed=[],
                          statuses={plan.cells[0].key: "done"})

    monkeypatch.setattr("sweepdae.runner.run_plan", fake_run_plan)
    r = CliRunner().invoke(app, ["run", str(grid), "--store", store_url, "--gpus", "cpu", "--gpus-per-cell", "2",
                                 "--cells-per-gpu", "3", "--cpu-cells", "4", "--max-retries", "5", "--fail-fast",
                                 "--only", "latent_dim=2", "--launcher", "fork", "--plain", "--runs-dir",
                                 str(tmp_path / "r")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert calls == [{"grid": "cli", "cells": 2, "only": "latent_dim=2", "gpus": "cpu", "gpus_per_cell": 2,
                      "cells_per_gpu": 3, "cpu_cells": 4, "max_retries": 5, "fail_fast": True,
                      "runs_dir": str(tmp_path / "r"), "launcher": "fork", "plain": True}]
    calls.clear()
    r = CliRunner().invoke(app, ["run", str(grid), "--store", store_url])
    assert r.exit_code == 0 and calls[0] | {"grid": "cli", "cells": 2} == calls[0]
    assert {k: calls[0][k] for k in ("only", "gpus", "gpus_per_cell", "cells_per_gpu", "cpu_cells", "max_retries",
                                     "fail_fast", "runs_dir", "launcher", "plain")} == {
        "only": None, "gpus": "auto", "gpus_per_cell": 1, "cells_per_gpu": 1, "cpu_cells": 1, "max_retries": 1,
        "fail_fast": False, "runs_dir": None, "launcher": "auto", "plain": None}


def test_run_exits_1_when_a_cell_is_not_done(grid: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run_plan(store: Any, plan: Any, **kw: Any) -> RunSummary:
        k0, k1 = (c.key for c in plan.cells)
        return RunSummary(total=2, cached=0, done=[k0], failed=[k1], statuses={k0: "done", k1: "failed"})

    monkeypatch.setattr("sweepdae.runner.run_plan", fake_run_plan)
    r = CliRunner().invoke(app, ["run", str(grid), "--store", store_url])
    assert r.exit_code == 1 and "1 of 2 cells not done" in r.output, r.output


def test_ctrl_c_in_one_grid_stops_the_whole_sweep(tmp_path: Path, grid: Path, store_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C stops the grid being run and the grids after it (it once went on with the next grid)."""
    second = tmp_path / "cli2.toml"
    second.write_text(GRID.replace('name = "cli"', 'name = "cli2"'))
    ran: list[str] = []

    def fake_run_plan(store: Any, plan: Any, **kw: Any) -> RunSummary:
        ran.append(plan.grid.name)
        return RunSummary(total=2, cached=0, done=[], failed=[], statuses={c.key: "queued" for c in plan.cells},
                          interrupted=True)

    monkeypatch.setattr("sweepdae.runner.run_plan", fake_run_plan)
    r = CliRunner().invoke(app, ["run", str(grid), str(second), "--store", store_url])
    assert ran == ["cli"] and r.exit_code == 1, (ran, r.output)


def test_run_refuses_a_bad_launcher_before_anything_runs(grid: Path, store_url: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sweepdae.runner.run_plan", lambda *a, **k: pytest.fail("launched"))
    r = CliRunner().invoke(app, ["run", str(grid), "--store", store_url, "--launcher", "slurm"])
    assert isinstance(r.exception, SweepdaeError) and "--launcher" in str(r.exception)


def test_worker_hands_its_options_to_run_worker(tmp_path: Path, store_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_worker(store: Any, **kw: Any) -> RunSummary:
        calls.append(kw)
        return RunSummary(total=0, cached=0, done=[], failed=[], statuses={})

    monkeypatch.setattr("sweepdae.runner.run_worker", fake_run_worker)
    r = CliRunner().invoke(app, ["worker", "--store", store_url, "--gpus", "0,1", "--gpus-per-cell", "2",
                                 "--max-retries", "0", "--forever", "--launcher", "accelerate", "--live",
                                 "--runs-dir", "rr"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert calls == [{"gpus": "0,1", "gpus_per_cell": 2, "cells_per_gpu": 1, "cpu_cells": 1, "max_retries": 0,
                      "forever": True, "runs_dir": "rr", "launcher": "accelerate", "plain": False}]


def test_report_hands_its_options_to_write_reports(tmp_path: Path, grid: Path, store_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_write_reports(store: Any, **kw: Any) -> list[Path]:
        calls.append(kw)
        return [kw["out"] / "report.html"]

    monkeypatch.setattr("sweepdae.report.write_reports", fake_write_reports)
    r = CliRunner().invoke(app, ["report", str(grid), "quickstart", "--store", store_url, "--latex", "--csv",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert calls == [{"grids": ["cli", "quickstart"], "out": tmp_path / "o", "html": False, "latex": True, "csv": True,
                      "runs_dir": None}]
    calls.clear()
    r = CliRunner().invoke(app, ["report", "--store", store_url])
    assert r.exit_code == 0 and calls == [{"grids": None, "out": Path("reports"), "html": True, "latex": False,
                                           "csv": False, "runs_dir": None}]


def test_a_large_plan_prints_plain_aligned_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over PLAIN_TABLE_ROWS cells, `plan` prints plain columns (Rich took ~10 s to lay out 20,000 rows): the same
    columns and rows as the table, one line per cell, labels escaped."""
    import sweepdae.cli as cli

    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    store = f"journal:{tmp_path / 's.journal'}"
    small = CliRunner().invoke(app, ["plan", str(grid), "--store", store], env={"COLUMNS": "200"})
    monkeypatch.setattr(cli, "PLAIN_TABLE_ROWS", 1)
    big = CliRunner().invoke(app, ["plan", str(grid), "--store", store], env={"COLUMNS": "200"})
    assert small.exit_code == big.exit_code == 0, (small.output, big.output)
    cells = expand(parse_grid(GRID, "g.toml")).cells
    lines = big.output.splitlines()
    assert lines[1].split() == ["#", "cell", "key", "training", "status"]
    for i, c in enumerate(cells):
        assert lines[2 + i].startswith(f"{i}  ") and c.label in lines[2 + i] and c.key[:12] in lines[2 + i]
    assert lines[-1] == small.output.splitlines()[-1]  # the same summary line
    assert "┃" in small.output and "┃" not in big.output
