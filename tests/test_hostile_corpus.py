"""A corpus of hostile and careless input, run through the console script's own `main()` in this process (fast):
grid files, command-line values, damaged stores and labels that renderers could misread. Every case asserts its
exit status, at most one error line (Click's usage errors add their two-line usage header), no traceback, and that
the store it was pointed at is byte-identical afterwards (nothing already stored is lost or corrupted). The
per-defect tests with their details are in test_grid_hostile.py, test_store_hostile.py and test_report_hostile.py;
this file is the quick sweep over all of them together."""

from __future__ import annotations

import csv
import io
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from _console import run_main as main

from sweepdae.grid import expand, load_grid
from sweepdae.runner import enqueue_plan
from sweepdae.store import open_store

HEAD = ('[grid]\nname = "{name}"\nseeds = [0]\n\n[base]\ndata.name = "digits"\ndata.image_size = 8\n'
        'tokenizer.patch_size = 4\nmodel.size = "micro"\n')
GOOD = HEAD.format(name="good") + "\n[axes]\ntokenizer.latent_dim = [2, 4]\n"
SECRET = "s3cr/et"  # a password with a "/", which the old masking missed




def _filled_store(folder: Path, grid_text: str, name: str) -> Path:
    """A journal store holding `grid_text`'s cells, all done with made-up metrics (nothing trains)."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / f"{name}.toml"
    grid.write_text(grid_text)
    journal = folder / "store.journal"
    plan = expand(load_grid(grid))
    with open_store(f"journal:{journal}") as s:
        enqueue_plan(s, plan, list(plan.cells))
        i = 0
        while (claim := s.claim("corpus")) is not None:
            s.complete(claim, metrics={"probe_top1": 50.0 + i, "knn_top1": 40.0 + i}, info={})
            i += 1
    return journal


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished store, copied afresh by every case (read-only here)."""
    return _filled_store(tmp_path_factory.mktemp("corpus"), GOOD, "good")


@pytest.fixture
def store(tmp_path: Path, pristine: Path) -> Path:
    shutil.copy(pristine, tmp_path / "store.journal")
    return tmp_path / "store.journal"


def _write(tmp: Path, name: str, data: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


# case: (how to make the argv in a tmp folder, exit status, a fragment of the error line)
Case = tuple[Callable[[Path], list[str]], int, str]
GRID = HEAD.format(name="h")
CASES: dict[str, Case] = {
    # grid files
    "empty file": (lambda t: ["plan", _write(t, "g.toml", "")], 2, "g.toml"),
    "not UTF-8": (lambda t: ["plan", _write(t, "g.toml", b"\xff\xfe[grid]\x00")], 2, "g.toml"),
    "not TOML": (lambda t: ["plan", _write(t, "g.toml", "[grid\nname = ")], 2, "g.toml"),
    "50 MB of junk": (lambda t: ["plan", _write(t, "g.toml", GRID + "junk = \"" + "x" * (50 << 20) + "\"\n")],
                      2, "g.toml"),
    "a 40 KB dotted key": (lambda t: ["plan", _write(t, "g.toml", GRID + ".".join(["a"] * 20_000) + " = 1\n")],
                           2, "g.toml"),
    "an 800-part profile name": (lambda t: ["plan", _write(t, "g.toml", GRID + '\n[profiles."' + ".".join(["p"] * 800)
                                                           + '"]\ntrain.epochz = 2\n')], 2, "g.toml"),
    "an integer of 5,000 digits": (lambda t: ["plan", _write(t, "g.toml", GRID + "train.epochs = " + "9" * 5000)],
                                   2, "g.toml"),
    "a 4,000-digit epochs, dry run": (lambda t: ["run", _write(t, "g.toml", GRID + "train.epochs = " + "9" * 4000),
                                                 "--dry-run"], 2, "train.epochs"),
    "10**18 noise steps": (lambda t: ["plan", _write(t, "g.toml", GRID + "noise.num_steps = 1000000000000000000")],
                           2, "noise.num_steps"),
    "a negative value every profile re-values": (
        lambda t: ["plan", _write(t, "g.toml", HEAD.format(name="h").replace("seeds = [0]", 'seeds = [0]\n'
                                  'default_profile = "p"') + "\n[axes]\ntrain.epochs = [-5, 5]\n\n[profiles.p]\n"
                                  "axes.epochs = [1, 2]\n")], 2, "train.epochs"),
    "duplicate axis labels": (lambda t: ["plan", _write(t, "g.toml", GRID + '\n[axes]\ntrain.epochs = '
                                                        '{ values = [40, 80], labels = ["same", "same"] }\n')],
                              2, "same"),
    "two float values, one printed label": (
        lambda t: ["plan", _write(t, "g.toml", GRID + "\n[axes]\ntrain.base_lr = [1.0e-4, 1.00000001e-4]\n")], 0, ""),
    "two includes, one label": (lambda t: ["plan", _write(t, "g.toml", GRID + '\n[[include]]\nlabel = "ours"\n'
                                                          'train.epochs = 2\n\n[[include]]\nlabel = "ours"\n'
                                                          'train.epochs = 3\n')], 2, "ours"),
    "a SLURM partition with a space": (lambda t: ["run", "quickstart", "--executor", "slurm", "--partition",
                                                  "gpu -x", "--dry-run"], 1, "partition"),
    "a SLURM account starting with -": (lambda t: ["run", "quickstart", "--executor", "slurm", "--account",
                                                   "-A", "--dry-run"], 1, "account"),
    # command-line values
    "a negative watch interval": (lambda t: ["status", "--watch", "--interval", "-1"], 2, "--interval"),
    "a NaN watch interval": (lambda t: ["status", "--watch", "--interval", "nan"], 2, "--interval"),
    "negative retries": (lambda t: ["run", "quickstart", "--max-retries", "-5", "--dry-run"], 2, "--max-retries"),
    "report --out naming a file": (lambda t: ["report", "--out", _write(t, "afile", "x")], 1, "afile"),
    # stores
    "a PostgreSQL password with a slash": (
        lambda t: ["status", "--store", f"postgresql://alice:{SECRET}@127.0.0.1:1/db?sslpassword={SECRET}x"], 1,
        "alice"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_and_the_store_is_untouched(case: str, tmp_path: Path, store: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    make, expected, fragment = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPDAE_STORE", f"journal:{store}")
    before = store.read_bytes()
    code, out, err = main(*make(tmp_path))
    assert code == expected, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err and SECRET not in out + err, err[-3000:]
    if expected:
        errors = [x for x in err.splitlines() if x.startswith(("error:", "Error:"))]
        assert len(errors) == 1 and fragment in errors[0], err
        assert len(err.strip().splitlines()) <= 4, err  # a usage error: "Usage: ...", "Try ...", blank, "Error: ..."
        assert len(errors[0]) < 2500, errors[0]  # hostile input is cut, not echoed whole
    assert store.read_bytes() == before


def test_a_torn_journal_is_read_repaired_and_nothing_whole_is_lost(tmp_path: Path, store: Path) -> None:
    """A write cut short: the reader warns in one line and sees every whole record; the next write cuts the torn
    bytes off into a side file and appends after the last whole line."""
    data = store.read_bytes()
    cut = data.rfind(b"\n", 0, len(data) - 1) + 1 + 7  # 7 bytes into the last line
    store.write_bytes(data[:cut])
    url = f"journal:{store}"
    code, out, err = main("status", "--store", url, "--json")
    assert code == 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "torn" in err
    grid = _write(tmp_path, "good.toml", GOOD)
    code, out, err = main("forget", grid, "--store", url, "--only", "latent_dim=2", "--runs-dir",
                          str(tmp_path / "runs"))
    assert code == 0 and "Traceback" not in err, err
    side = list(tmp_path.glob("store.journal.torn-*"))
    assert len(side) == 1 and side[0].read_bytes() == data[data.rfind(b"\n", 0, cut) + 1:cut]
    repaired = store.read_bytes()
    assert repaired.startswith(data[:data.rfind(b"\n", 0, cut) + 1]) and repaired.endswith(b"\n")
    code, out, err = main("status", "--store", url)
    assert code == 0 and "torn" not in err, err


def test_a_line_damaged_inside_the_journal_is_one_line_and_left_as_it_is(tmp_path: Path, store: Path) -> None:
    lines = store.read_bytes().splitlines(keepends=True)
    lines.insert(len(lines) // 2, b'{"op_code": 4, "worker_id"\n')
    store.write_bytes(b"".join(lines))
    before = store.read_bytes()
    for args in (["status"], ["forget", _write(tmp_path, "good.toml", GOOD), "--runs-dir", str(tmp_path / "r")]):
        code, out, err = main(*args, "--store", f"journal:{store}")
        assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"line {len(lines) // 2 + 1}" in err, err
        assert store.read_bytes() == before


HOSTILE_LABELS = ["$a^$", "[/]", "[ours]", '=HYPERLINK("http://x")', "*star", "tab\there", "\x1b[31mred"]


def test_hostile_labels_render_in_every_format_inside_out(tmp_path: Path) -> None:
    """Labels that are mathtext, Rich markup, LaTeX's optional argument, a spreadsheet formula or a terminal escape:
    the report renders (exit 0), every file lands under --out, and the CSV holds no live formula."""
    labels = ", ".join('"' + x.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
                       .replace("\x1b", "\\u001b") + '"' for x in HOSTILE_LABELS)
    values = list(range(2, 2 + len(HOSTILE_LABELS)))
    text = (HEAD.format(name="../../labels") + f'\n[axes]\ntokenizer.latent_dim = {{ values = {values}, '
            f'labels = [{labels}], name = "d" }}\n\n[report]\nrows = "d"\n')
    journal = _filled_store(tmp_path / "s", text.replace('"../../labels"', '"labels"'), "labels")
    # the same cells also registered as "../../labels": a shared store holds whatever name a writer gave
    plan = expand(load_grid(tmp_path / "s" / "labels.toml"))
    with open_store(f"journal:{journal}") as s:
        s.register_grid("../../labels", profile="", spec={**plan.spec(), "name": "../../labels"},
                        cells=[{"key": c.key, "label": c.label, "coords": c.coords, "step": c.step}
                               for c in plan.cells])
    before = {p for p in tmp_path.rglob("*")}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Glyph")  # "Glyph 27 missing from font": a control character
        code, out, err = main("report", "--html", "--latex", "--csv", "--out", str(tmp_path / "out"), "--store",
                              f"journal:{journal}")
    assert code == 0 and "Traceback" not in err, err
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p.is_relative_to(tmp_path / "out") for p in new), sorted(new)
    assert (tmp_path / "out" / "report.html").read_text().count("$a^$") >= 1
    for f in (tmp_path / "out" / "data").glob("*.csv"):
        for row in csv.reader(io.StringIO(f.read_text())):
            assert not any(cell.startswith(("=", "@")) for cell in row), (f, row)
