"""The store and the commands around it under hostile conditions: a journal torn by a crash or a full disk, a
damaged journal, a crafted checkpoint, a password in a store URL, removal that must not half-apply, SLURM option
strings. Every check goes through the installed `sweepdae` where a user would meet the defect; each is fast."""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sweepdae.grid import expand, parse_grid
from sweepdae.store import open_store

SCRIPT = shutil.which("sweepdae", path=str(Path(sys.executable).parent))
EXAMPLE = Path(__file__).resolve().parent.parent / "reports" / "examples" / "cpu"

GRID = """
[grid]
name = "hostile"
seeds = [0]

[base]
data.name = "digits"
data.image_size = 8
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4
model.size = "micro"

[axes]
tokenizer.latent_dim = [2, 4, 8]
"""


def sweepdae(*args: str, cwd: Path, env: dict[str, str] | None = None,
             limit_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `sweepdae` with ARGS; `limit_bytes` caps the size of any file it writes (as `ulimit -f`), with
    SIGXFSZ ignored so that a write past it fails with EFBIG instead of killing the process."""
    assert SCRIPT, f"no sweepdae console script beside {sys.executable}: pip install -e . first"

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))  # type: ignore[arg-type]

    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "SWEEPDAE_DEBUG")}
    return subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**base, "COLUMNS": "200", **(env or {})},
                          preexec_fn=cap if limit_bytes is not None else None)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exactly one `error:` line on stderr and no traceback; returns that line."""
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    return errors[0]


def done_store(tmp: Path, name: str = "store.journal") -> tuple[str, Path, list[str]]:
    """A journal store where every cell of GRID is done (recorded through the store API: nothing trains), the grid
    file, and the cells' keys."""
    grid = tmp / "hostile.toml"
    grid.write_text(GRID)
    plan = expand(parse_grid(GRID, str(grid)))
    url = f"journal:{tmp / name}"
    with open_store(url) as s:
        s.enqueue([{"key": c.key, "label": c.label, "recipe": c.recipe.to_dict(), "grid": "hostile",
                    "train_key": c.train_key} for c in plan.cells])
        while (claim := s.claim("test")) is not None:
            s.complete(claim, metrics={"probe_top1": 50.0}, info={"artifact_dir": claim.key})
    return url, grid, [c.key for c in plan.cells]


# ------------------------------------------------------------------------------------ item 2: a torn journal
def _statuses(path: Path) -> dict[str, str]:
    with open_store(f"journal:{path}", create=False) as s:
        return s.status()


@pytest.mark.parametrize("seed", range(6))
def test_a_journal_torn_at_a_random_offset_reads_what_is_before_the_cut_then_writes_fine(
        tmp_path: Path, seed: int, capfd: pytest.CaptureFixture[str]) -> None:
    whole = (EXAMPLE / "store.journal").read_bytes()  # a real journal sweepdae made
    cut = random.Random(seed).randrange(len(whole) // 4, len(whole))
    if whole[cut - 1:cut] == b"\n":
        cut -= 1  # always a torn line, never a clean end
    torn = tmp_path / "store.journal"
    torn.write_bytes(whole[:cut])
    clean = tmp_path / "clean.journal"  # what was whole before the cut
    clean.write_bytes(whole[:whole.rfind(b"\n", 0, cut) + 1])
    expected = _statuses(clean)

    assert _statuses(torn) == expected
    assert "torn" in capfd.readouterr().err  # the reader says so, once, instead of skipping it silently
    with open_store(f"journal:{torn}") as s:  # two writes: the second used to brick the store
        s.register_grid("one", profile="p", spec={}, cells=[])
        s.register_grid("two", profile="p", spec={}, cells=[])
    warning = capfd.readouterr().err
    assert warning.count("its last line was torn") == 1 and "Traceback" not in warning, warning
    (side,) = tmp_path.glob("store.journal.torn-*")
    assert clean.read_bytes() + side.read_bytes() == whole[:cut]  # nothing lost: the cut bytes are kept aside
    assert torn.read_bytes().startswith(clean.read_bytes())
    with open_store(f"journal:{torn}", create=False) as s:
        assert s.status() == expected
        assert {g["name"] for g in s.grids()} >= {"one", "two"}


def test_status_on_a_torn_journal_warns_and_a_write_repairs_it(tmp_path: Path) -> None:
    url, grid, keys = done_store(tmp_path)
    path = tmp_path / "store.journal"
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # the last record (a cell's COMPLETE) cut short
    r = sweepdae("status", "--store", url, "--json", cwd=tmp_path)
    assert r.returncode == 0 and "is torn" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert '"done": 2' in r.stdout and '"running": 1' in r.stdout  # the torn COMPLETE is not read
    only = ["--only", "latent_dim=[24] "]  # the two cells still done
    r = sweepdae("forget", str(grid), *only, "--store", url, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0 and "its last line was torn" in r.stderr, r.stderr
    for _ in range(2):  # further writes and reads keep working (the second write used to brick the store)
        assert sweepdae("forget", str(grid), *only, "--store", url, cwd=tmp_path).returncode == 0
        r = sweepdae("status", "--store", url, "--json", cwd=tmp_path)
        assert r.returncode == 0 and "torn" not in r.stderr and '"done"' not in r.stdout, r.stderr


def test_a_size_limited_append_leaves_the_journal_whole(tmp_path: Path) -> None:
    """As the review did with `ulimit -f` during `forget`: the write fails with one line, and the journal is left
    as it was (the partial append is taken back), so the next command reads and writes it."""
    url, grid, keys = done_store(tmp_path)
    path = tmp_path / "store.journal"
    before = path.read_bytes()
    r = sweepdae("forget", str(grid), "--store", url, cwd=tmp_path, limit_bytes=len(before) + 60)
    line = one_line_error(r)
    assert "too large" in line.lower(), line
    assert path.read_bytes() == before
    r = sweepdae("forget", str(grid), "--store", url, cwd=tmp_path)
    assert r.returncode == 0 and "forgot 3 of 3" in r.stderr, r.stderr
    r = sweepdae("status", "--store", url, "--json", cwd=tmp_path)
    assert r.returncode == 0 and '"counts": {}' in r.stdout, (r.stdout, r.stderr)  # all three forgotten


def test_a_torn_journal_under_a_stale_lock_warns_and_under_a_fresh_lock_is_silent(tmp_path: Path) -> None:
    """A writer killed mid-append leaves its torn line and its lock: once the lock is older than Optuna's grace
    period (30 s) it is a crash's, and `status` says the line is torn; a fresh lock is a write in progress."""
    url, grid, keys = done_store(tmp_path)
    path = tmp_path / "store.journal"
    path.write_bytes(path.read_bytes()[:-40])
    lock = Path(f"{path}.lock")
    os.symlink(str(path), str(lock))  # as Optuna's JournalFileSymlinkLock takes it
    r = sweepdae("status", "--store", url, "--json", cwd=tmp_path)
    assert r.returncode == 0 and "torn" not in r.stderr, r.stderr
    old = os.stat(path).st_mtime - 60
    os.utime(lock, (old, old), follow_symlinks=False)  # the lock, and the journal it points at, a minute old
    os.utime(path, (old, old))
    r = sweepdae("status", "--store", url, "--json", cwd=tmp_path)
    assert r.returncode == 0 and '"running": 1' in r.stdout, (r.stdout, r.stderr)
    assert [ln for ln in r.stderr.splitlines() if "torn" in ln] == r.stderr.splitlines(), r.stderr
    assert r.stderr.count("is torn") == 1, r.stderr


def test_a_journal_damaged_inside_is_one_line_naming_the_line_for_readers_and_writers(tmp_path: Path) -> None:
    url, grid, keys = done_store(tmp_path)
    path = tmp_path / "store.journal"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4][:30] + lines[5]  # a torn record with the next append glued on, as old sweepdae left it
    path.write_bytes(b"".join(lines))
    for args in (["status", "--store", url], ["forget", str(grid), "--store", url]):
        line = one_line_error(sweepdae(*args, cwd=tmp_path))
        assert "line 5 " in line and "delete line 5" in line, line


def _args(**kw: Any) -> list[str]:
    return [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]


# ------------------------------------------------------------------------------------ item 5: passwords
SECRET_URLS = [
    # a space in the password and in a query value (SQLAlchemy reads both so), then the same unparsable
    "postgresql://alice:ab cd3f@127.0.0.1:1/db?sslpassword=ab cd3f&sslmode=disable",
    "postgresql://alice:ab cd3f@127.0.0.1:notaport/db?sslpassword=ab cd3f",
    "postgresql://alice:ab/cd3f@127.0.0.1:1/db",  # a '/' in the password (SQLAlchemy reads it so)
    "postgresql://alice:ab/cd3f@127.0.0.1:1/db?sslpassword=ab/cd3f&sslmode=disable",
    "postgresql://alice:ab%2Fcd3f@127.0.0.1:1/db?PASSWORD=ab/cd3f",
    "postgresql://alice:ab/cd3f@127.0.0.1:notaport/db?sslpassword=ab/cd3f",  # fails to parse
    "postgresql://alice:ab@cd3f@127.0.0.1:1/db",  # an unescaped '@': refused, still masked
    "postgres://alice:ab:cd3f?@127.0.0.1:1/db",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_store_url_that_cannot_connect_never_prints_its_password(tmp_path: Path, url: str) -> None:
    for args in (["status", "--store", url], ["gc", "--store", url]):
        r = sweepdae(*args, cwd=tmp_path, env={"SWEEPDAE_STORE": ""})
        line = one_line_error(r)
        assert "cd3f" not in r.stdout + r.stderr and "***" in line, line


@pytest.mark.parametrize("url", SECRET_URLS)
def test_mask_password_hides_the_secret_of_every_form(url: str) -> None:
    from sweepdae.store import mask_password

    shown = mask_password(url)
    assert "cd3f" not in shown and mask_password(shown) == shown, shown
    assert "cd3f" not in mask_password(f'connection to "{url}" failed; sslpassword=cd3f, Password: cd3f')


# ------------------------------------------------------------------------------------ item 3: checkpoints
class _Crafted:
    """Unpickling this runs code: here it only creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_on_resume_and_runs_no_code(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from sweepdae.cell import train as tr

    recipe = expand(parse_grid(GRID)).cells[0].recipe
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    events: list[dict[str, Any]] = []
    real = tmp_path / "real.pt"  # what sweepdae writes still loads (weights_only=True)
    tr._save_checkpoint(real, "tk", recipe, model, ema, opt, 2, 7, batch=1,
                        gd_state=torch.Generator().get_state(), curve=[[1.0, 0.5]])
    assert tr._load_checkpoint(real, "tk", model, ema, opt, lambda **e: events.append(e))[:3] == (2, 7, 1)

    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"train_key": "tk", "model": _Crafted(marker)}, crafted)
    with pytest.warns(UserWarning) as caught:
        got = tr._load_checkpoint(crafted, "tk", model, ema, opt, lambda **e: events.append(e))
    assert got == (0, 0, 0, None, [])  # trains from scratch
    assert not marker.exists()
    (line,) = [str(w.message) for w in caught]
    assert "refused" in line and "\n" not in line, line
    with pytest.raises(tr.TrainingError, match="refused"):  # a finished training's weights: same refusal
        tr.load_weights(crafted, "tk", model, ema=False)
    assert not marker.exists()


def test_cached_probe_features_are_loaded_without_unpickling_code(tmp_path: Path) -> None:
    import torch

    from sweepdae.cell import probing

    marker = tmp_path / "pwned"
    path = tmp_path / "features.pt"
    torch.save({"depth": 1, "t": 1, "train": _Crafted(marker), "test": None}, path)
    calls: list[int] = []

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.zeros(len(x), 2)

    class _Data:
        def batches(self, n: int, *, shuffle: bool, device: torch.device,
                    shard: tuple[int, int] | None = None) -> Any:
            yield torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)

        def __len__(self) -> int:
            return 4

    (train_f, _), _ = probing._cached_features(path, fn, _Data(), _Data(),  # type: ignore[arg-type]
                                               depth=1, t=1, device=torch.device("cpu"))
    assert not marker.exists() and calls and train_f.shape == (4, 2)  # refused, so extracted again


# ------------------------------------------------------------------------------------ item 7: one line, not a traceback
@pytest.mark.parametrize("args", [
    ["status", "--watch", "--interval", "-1"], ["status", "--watch", "--interval", "nan"],
    ["status", "--watch", "--interval", "inf"], ["status", "--watch", "--interval", "0"],
    ["run", "quickstart", "--dry-run", "--max-retries", "-5"], ["run", "quickstart", "--dry-run", "--cpu-cells", "0"],
    ["run", "quickstart", "--dry-run", "--cells-per-gpu", "-1"], ["worker", "--max-retries", "-1"],
    ["worker", "--gpus-per-cell", "0"], ["tune", "quickstart", "--trials", "1", "--max-retries", "-2"],
])
def test_negative_counts_and_bad_intervals_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    r = sweepdae(*args, cwd=tmp_path)
    option = next(a for a in args if a.startswith("--") and a not in ("--watch", "--dry-run", "--trials"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"Invalid value for '{option}'" in r.stderr, r.stderr


def test_an_os_error_is_one_line_and_sweepdae_debug_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The console entry point's last resort: an OSError, ValueError or OverflowError that no layer turned into a
    SweepdaeError (a full disk, a number too large) is one line and exit 1; SWEEPDAE_DEBUG=1 adds the traceback."""
    from sweepdae import cli
    from sweepdae.runner import status as st

    url, _, _ = done_store(tmp_path)
    for exc in (OSError(28, "No space left on device"), ValueError("Exceeds the limit (4300 digits)"),
                OverflowError("int too large to convert")):
        def boom(*a: Any, exc: Exception = exc, **k: Any) -> None:
            raise exc

        monkeypatch.setattr(st, "show_status", boom)
        for debug in ("", "1"):
            monkeypatch.setenv("SWEEPDAE_DEBUG", debug)
            monkeypatch.setattr(sys, "argv", ["sweepdae", "status", "--store", url])
            with pytest.raises(SystemExit) as out:
                cli.main()
            err = capsys.readouterr().err
            assert out.value.code == 1
            assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
                ln for ln in err.splitlines() if type(exc).__name__ in ln and ln.startswith("error:")]
            assert ("Traceback" in err) == (debug == "1"), err
            if not debug:
                assert err.count("\n") == 1 and str(exc) in err, err


def test_a_runs_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    r = sweepdae("run", "quickstart", "--profile", "ci", "--plain", "--runs-dir", str(tmp_path / "runs"),
                 "--store", f"journal:{tmp_path / 's.journal'}", cwd=tmp_path)
    one_line_error(r)


# ------------------------------------------------------------------------------------ item 9: removal
def test_forget_checks_every_cell_before_it_changes_anything(tmp_path: Path) -> None:
    url, grid, keys = done_store(tmp_path)
    runs = tmp_path / "runs"
    for key in keys:
        (runs / key).mkdir(parents=True)
        (runs / key / "result.json").write_text("{}")
    with open_store(url) as s:  # the last cell queued again: forget must refuse it before touching the others
        s.forget([keys[2]])
        s.enqueue([{"key": keys[2], "label": "x", "recipe": {}, "grid": "hostile"}])
    line = one_line_error(sweepdae("forget", str(grid), "--store", url, "--runs-dir", str(runs), cwd=tmp_path))
    assert keys[2][:12] in line and "queued" in line and "nothing was forgotten" in line, line
    with open_store(url, create=False) as s:
        assert s.status(keys) == {keys[0]: "done", keys[1]: "done", keys[2]: "queued"}
    assert all((runs / k / "result.json").exists() for k in keys)
    r = sweepdae("forget", str(grid), "--only", "latent_dim=[24] ", "--store", url, "--runs-dir", str(runs),
                 cwd=tmp_path)
    assert r.returncode == 0 and "forgot 2 of 2" in r.stderr, r.stderr
    assert not (runs / keys[0]).exists() and not (runs / keys[1]).exists() and (runs / keys[2]).exists()


def test_gc_never_removes_a_training_another_store_uses(tmp_path: Path) -> None:
    from sweepdae.runner.coordinator import mark_training

    url_a, _, _ = done_store(tmp_path, "a.journal")
    url_b, _, _ = done_store(tmp_path, "b.journal")
    with open_store(url_a) as a, open_store(url_b) as b:
        id_a, id_b = a.identity(), b.identity()
        assert id_a != id_b and a.identity() == id_a  # made once, then kept
    with open_store(f"journal:{tmp_path}/./a.journal", create=False) as a:
        assert a.identity(create=False) == id_a  # the same store by another URL
    train = tmp_path / "runs" / "_train"
    mine, theirs, shared, legacy, empty = (train / (c * 64) for c in "abcde")
    mark_training(mine, id_a)  # as the coordinator does: marked before the cell trains into the folder
    mark_training(theirs, id_b)
    mark_training(shared, id_a)
    mark_training(shared, id_b)
    for folder in (mine, theirs, shared, legacy):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trained.json").write_text("{}")
    empty.mkdir()
    r = sweepdae("gc", "--store", url_a, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not mine.exists() and not empty.exists()
    assert theirs.exists() and legacy.exists() and shared.exists()
    assert {p.name for p in (shared / "stores").iterdir()} == {id_b}  # only store a's mark went
    assert "record no store" in r.stderr and "another store uses" in r.stderr, r.stderr
    r = sweepdae("gc", "--store", url_a, "--runs-dir", str(tmp_path / "runs"), "--include-unmarked", cwd=tmp_path)
    assert r.returncode == 0 and not legacy.exists() and theirs.exists() and shared.exists(), r.stderr


def test_forget_finds_the_runs_folder_beside_the_store_and_warns_of_a_folder_it_cannot_find(tmp_path: Path) -> None:
    url, grid, keys = done_store(tmp_path)
    runs = tmp_path / "runs"  # beside the store, as `report` looks for it
    for key in keys[:2]:
        (runs / key).mkdir(parents=True)
        (runs / key / "result.json").write_text(f'{{"key": "{key}", "metrics": {{}}}}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = sweepdae("forget", str(grid), "--store", url, cwd=elsewhere)
    assert r.returncode == 0 and "forgot 3 of 3" in r.stderr, r.stderr
    assert not (runs / keys[0]).exists() and not (runs / keys[1]).exists()
    (warning,) = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert "1 of 3" in warning and str(runs) in warning and keys[2][:12] in warning, r.stderr


def test_the_coordinator_sets_aside_only_a_result_older_than_the_forget_of_its_key(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sweepdae.runner.coordinator import Coordinator

    url, grid, keys = done_store(tmp_path)
    messages: list[str] = []
    with open_store(url) as s:
        s.forget(keys[:2])
        coord = Coordinator.__new__(Coordinator)  # only what `_set_aside_forgotten` uses: the store and the view
        coord.store, coord.view = s, SimpleNamespace(message=messages.append)  # type: ignore[assignment]
        forgot = s.forgotten_at(keys[0])
        assert forgot is not None and s.forgotten_at(keys[2]) is None
        cases = {keys[0]: (forgot - 5, None),  # made before the forget: the forgotten result
                 keys[1]: (forgot + 5, forgot + 5),  # made after it (the cell ran again): recorded
                 keys[2]: (1.0, 1.0)}  # never forgotten: recorded, however old
        for key, (mtime, finished) in cases.items():
            (tmp_path / key).mkdir()
            (tmp_path / key / "result.json").write_text(
                f'{{"key": "{key}", "metrics": {{}}, "finished": {finished or "null"}}}')
            os.utime(tmp_path / key / "result.json", (mtime, mtime))
            coord._set_aside_forgotten(SimpleNamespace(key=key, label=key[:6]), tmp_path / key)  # type: ignore[arg-type]
    assert [(tmp_path / k / "result.json").exists() for k in keys] == [False, True, True]
    assert (tmp_path / keys[0] / "result.json.forgotten").exists() and len(messages) == 1, messages


@pytest.mark.slow
def test_a_run_never_records_again_a_result_that_forget_dropped(tmp_path: Path) -> None:
    """`forget` looked in another runs folder than the run uses: the old result.json stays, and the run must not
    record it again (it is older than the forget); the cell runs instead (here it crashes on purpose at once).
    Slow tier: the cell is a real process (torch import), about 9 s."""
    url, grid, keys = done_store(tmp_path)
    runs = tmp_path / "other-runs"
    (runs / keys[0]).mkdir(parents=True)
    (runs / keys[0] / "result.json").write_text(f'{{"key": "{keys[0]}", "metrics": {{"probe_top1": 50.0}}}}')
    os.utime(runs / keys[0] / "result.json", (1, 1))  # made long before the forget below
    r = sweepdae("forget", str(grid), "--only", "latent_dim=2 ", "--store", url, cwd=tmp_path)
    assert r.returncode == 0 and "forgot 1 of 1" in r.stderr and "not found" in r.stderr, r.stderr
    r = sweepdae("run", str(grid), "--only", "latent_dim=2 ", "--store", url, "--runs-dir", str(runs),
                 "--plain", "--max-retries", "0", "--gpus", "cpu", cwd=tmp_path,
                 env={"SWEEPDAE_FAULT": "crash@phase=data"})
    assert r.returncode != 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    with open_store(url, create=False) as s:
        assert s.status([keys[0]]) == {keys[0]: "failed"}  # not "done" with the forgotten result
    assert not (runs / keys[0] / "result.json").exists() and (runs / keys[0] / "result.json.forgotten").exists()


def test_gc_keeps_a_training_made_before_marks_that_this_store_reused(tmp_path: Path) -> None:
    """A training folder with no marks (made by another store before sweepdae recorded stores) that this store
    reuses gets a `legacy` mark beside its own, so this store's `gc` keeps it unless --include-unmarked."""
    from sweepdae.runner.coordinator import mark_training

    url_a, _, _ = done_store(tmp_path, "a.journal")
    with open_store(url_a) as a:
        id_a = a.identity()
    theirs = tmp_path / "runs" / "_train" / ("e" * 64)
    theirs.mkdir(parents=True)
    (theirs / "trained.json").write_text("{}")
    mark_training(theirs, id_a)  # what the coordinator does when a cell of store a reuses it
    assert {p.name for p in (theirs / "stores").iterdir()} == {id_a, "legacy"}
    r = sweepdae("gc", "--store", url_a, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0 and theirs.exists() and "1 kept" in r.stderr, r.stderr
    assert {p.name for p in (theirs / "stores").iterdir()} == {"legacy"}  # store a's own mark went
    r = sweepdae("gc", "--store", url_a, "--runs-dir", str(tmp_path / "runs"), "--include-unmarked", cwd=tmp_path)
    assert r.returncode == 0 and not theirs.exists(), r.stderr


# ------------------------------------------------------------------------------------ item 10: SLURM option strings
@pytest.mark.parametrize(("option", "value"), [
    ("--partition", "-x"), ("--partition", "gpu --wrap=id"), ("--account", "--uid=0"), ("--qos", "high prio"),
    ("--constraint", "a100 ib"), ("--constraint", "-a100"),
])
def test_slurm_option_strings_from_the_command_line_are_validated(tmp_path: Path, option: str, value: str) -> None:
    grid = tmp_path / "hostile.toml"
    grid.write_text(GRID)
    r = sweepdae("run", str(grid), "--executor", "slurm", "--dry-run", f"{option}={value}",
                 "--store", f"journal:{tmp_path / 's.journal'}", cwd=tmp_path)
    line = one_line_error(r)
    assert line.startswith(f"error: {option}: expected "), line


@pytest.mark.parametrize(("key", "value"), [("partition", "gpu x"), ("account", "-A"), ("constraint", "a100 &ib")])
def test_slurm_option_strings_of_a_grid_are_validated(tmp_path: Path, key: str, value: str) -> None:
    grid = tmp_path / "hostile.toml"
    grid.write_text(GRID + f'\n[slurm]\n{key} = "{value}"\n')
    r = sweepdae("run", str(grid), "--executor", "slurm", "--dry-run", "--store", f"journal:{tmp_path / 's.journal'}",
                 cwd=tmp_path)
    # refused where the grid is read (its line named), before any executor is involved
    assert re.search(rf"{re.escape(str(grid))}:\d+: slurm\.{key}: expected ", one_line_error(r))
    grid.write_text(GRID + f'\n[slurm.by.latent_dim."4"]\n{key} = "{value}"\n')
    r = sweepdae("run", str(grid), "--executor", "slurm", "--dry-run", "--store", f"journal:{tmp_path / 's.journal'}",
                 cwd=tmp_path)
    assert re.search(rf"{re.escape(str(grid))}:\d+: slurm\.by\.latent_dim\.4\.{key}: expected ", one_line_error(r))


def test_valid_slurm_option_strings_pass_and_the_user_config_is_checked(tmp_path: Path) -> None:
    from sweepdae.errors import SweepdaeError
    from sweepdae.grid.schema import check_option_strings
    from sweepdae.runner import slurm as sl

    check_option_strings({"partition": "gpu,gpu-long", "account": "proj_42.a", "qos": "normal",
                          "constraint": "[rack1*2&rack2*4]|a100:2,(intel&ib)"}, lambda k, m: SweepdaeError(m))
    config = tmp_path / "slurm.toml"
    config.write_text('account = "proj42 --uid=0"\n')
    with pytest.raises(SweepdaeError, match=r"slurm.toml: account: expected an account name"):
        sl.user_config(config)


# ------------------------------------------------------------------------------------ item 10: no machine paths
def test_the_shipped_store_holds_no_absolute_path() -> None:
    text = (EXAMPLE / "store.journal").read_text()
    assert "/tmp/" not in text and "/work/" not in text and "/home/" not in text
    assert 'File \\"/' not in text and '":"/' not in text


def test_relativize_journal_rewrites_paths_and_keeps_every_other_line(tmp_path: Path) -> None:
    from sweepdae.store._paths import relativize_journal

    url, _, keys = done_store(tmp_path)
    path = tmp_path / "store.journal"
    with open_store(url) as s:
        s.enqueue([{"key": "k" * 64, "label": "x", "recipe": {}, "grid": "g"}])
        claim = s.claim("test")
        assert claim is not None
        s.fail(claim, failure_class="crash", error="no /old/runs/_cache/t.pt", retry=False, info={
            "run_dir": "/old/runs/kkk", "tokenizer": {"cache_path": "/old/runs/_cache/t.pt"}},
            traceback_tail='File "/ckpt/.venv/lib/python3.11/site-packages/torch/x.py", line 1\n'
                           'File "/other/checkout/sweepdae/cell/train.py", line 2\n')
    before = path.read_bytes().splitlines(keepends=True)
    assert relativize_journal(path, "/old/runs", runs_as="runs") >= 1
    after = path.read_bytes().splitlines(keepends=True)
    assert len(after) == len(before) and sum(a != b for a, b in zip(after, before, strict=True)) >= 1
    assert b"/old/runs" not in path.read_bytes() and b'File \\"/' not in path.read_bytes()
    with open_store(url, create=False) as s:
        row = s.cells(["k" * 64]).iloc[0]
        assert row["traceback_tail"].splitlines() == ['File "site-packages/torch/x.py", line 1',
                                                       'File "sweepdae/cell/train.py", line 2']
        assert row["info"]["tokenizer"]["cache_path"] == "_cache/t.pt" and row["error"] == "no _cache/t.pt"
        assert s.status(keys) == {k: "done" for k in keys}


def test_new_records_keep_paths_relative(tmp_path: Path) -> None:
    from sweepdae.store._paths import portable, portable_text, resolve_runs_dir, stored_runs_dir

    runs = tmp_path / "runs"
    assert portable({"a": f"{runs}/_cache/x.pt", "b": [str(runs)], "c": f"{runs}_old"}, runs) == {
        "a": "_cache/x.pt", "b": ["."], "c": f"{runs}_old"}
    assert portable_text(f'File "/x/y/sweepdae/cell/train.py", line 1: {runs}/k in {runs} ({runs}_old)', runs) == \
        f'File "sweepdae/cell/train.py", line 1: k in . ({runs}_old)'
    assert stored_runs_dir(runs, tmp_path) == "runs" and resolve_runs_dir("runs", tmp_path) == str(runs.resolve())
    assert stored_runs_dir(runs, None) == str(runs.absolute())  # a database server: where, on which host
