"""Hostile and careless grid files (issue 26): each is refused at plan time with one line naming the file, the key
and what was expected (exit 2, no traceback), or planned as the user meant. Timings are in
benchmarks/grid_planning.py, not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _console import run_main as cli

from sweepdae.grid import expand, load_grid, parse_grid
from sweepdae.grid.schema import MAX_GRID_BYTES, MAX_KEY_CHARS, MAX_KEY_PARTS, _Ctx, _fmt

ROOT = Path(__file__).resolve().parent.parent
SWEEPDAE = Path(sys.executable).with_name("sweepdae")  # the installed console script
HEAD = '[grid]\nname = "h"\n\n[base]\ndata.name = "digits"\ndata.image_size = 8\ntokenizer.patch_size = 4\n'
TOKENIZER_DIMS = (ROOT / "grids" / "tokenizer_dims.toml").read_text()




def plan(tmp_path: Path, text: str | bytes, *extra: str) -> tuple[int, str, str, Path]:
    path = tmp_path / "g.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out, err = cli("plan", str(path), "--store", f"journal:{tmp_path / 's.journal'}", *extra)
    return code, out, err, path


def assert_one_line(code: int, err: str, path: Path, *expected: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {path}") and all(e in lines[0] for e in expected), lines[0]
    assert len(lines[0]) < 600, lines[0]  # a hostile key or value is cut, not echoed whole
    return lines[0]


# -- item 1: two different recipes never share a label ---------------------------------------------------------------
SAME_LABEL = {  # case: (grid text, key named in the error, what the line says)
    "duplicate labels on an axis": (
        HEAD + '\n[axes]\ntrain.epochs = { values = [40, 80], labels = ["same", "same"] }\n',
        "g.toml:10: axes.train.epochs.labels: ", "label 'same'"),
    "duplicate labels on a zip": (
        HEAD + '\n[[zip]]\ntrain.epochs = [1, 2]\nprobe.epochs = [3, 4]\nlabels = ["x", "x"]\n',
        "zip[0].labels: ", "label 'x'"),
    "two includes, one label": (
        HEAD + '\n[[include]]\nlabel = "ours"\ntrain.epochs = 2\n\n[[include]]\nlabel = "ours"\ntrain.epochs = 3\n',
        "g.toml:14: include[1].label: ", "include[0] and include[1] are both labelled 'ours'"),
    "two includes, one auto-label": (  # train.epochs = 2 and probe.epochs = 2 both read "epochs=2"
        HEAD + '\n[[include]]\ntrain.epochs = 2\n\n[[include]]\nprobe.epochs = 2\n',
        "include[1]: ", "both labelled 'epochs=2'"),
    "an include labelled as an axis cell": (
        HEAD + '\n[axes]\ntrain.epochs = [1, 2]\n\n[[include]]\nlabel = "epochs=1"\nprobe.epochs = 5\n',
        "include[0].label: ", "[epochs=1] and include[0] are both labelled 'epochs=1'"),
    "bare axis labels that join to one text": (
        HEAD + '\n[axes]\ntokenizer.name = { values = ["patch_pca", "patch_ae"], labels = ["x y", "x"] }\n'
        'model.size = { values = ["micro", "tiny"], labels = ["z", "y z"] }\n',
        "axes: ", "labelled 'tokenizer=x y z'"),
}


@pytest.mark.parametrize("case", sorted(SAME_LABEL))
def test_two_recipes_with_one_label_are_refused(tmp_path: Path, case: str) -> None:
    text, key, says = SAME_LABEL[case]
    code, _, err, path = plan(tmp_path, text)
    line = assert_one_line(code, err, path, key, says)
    assert "seed" in line


def test_auto_labels_tell_close_floats_apart_and_keep_the_shipped_form(tmp_path: Path) -> None:
    """`train.base_lr = [1.0e-4, 1.00000001e-4]` labelled both `base_lr=0.0001`: now the second keeps its digits."""
    code, out, err, _ = plan(tmp_path, HEAD + "\n[axes]\ntrain.base_lr = [1.0e-4, 1.00000001e-4]\n", "--json")
    assert code == 0, err
    labels = [c["label"] for c in json.loads(out)["cells"]]
    assert labels == ["base_lr=0.0001 seed=0", "base_lr=0.000100000001 seed=0"]
    assert (_fmt(1e-4), _fmt(0.25), _fmt(2.0e-5), _fmt(1.00000001e-4)) == ("0.0001", "0.25", "2e-05",
                                                                             "0.000100000001")


def test_includes_with_one_label_and_one_recipe_are_the_seeds_of_one_row(tmp_path: Path) -> None:
    text = HEAD + ('\n[[include]]\nlabel = "ours"\nseed = 0\ntrain.epochs = 2\n'
                   '\n[[include]]\nlabel = "ours"\nseed = 1\ntrain.epochs = 2\n')
    code, out, err, _ = plan(tmp_path, text, "--json")
    assert code == 0, err
    assert [c["label"] for c in json.loads(out)["cells"]] == ["seed=0", "ours seed=0", "ours seed=1"]


def test_shipped_grids_plan_one_label_per_recipe_in_every_profile() -> None:
    for path in sorted((ROOT / "grids").glob("*.toml")):
        grid = load_grid(path)
        for profile in [None, *grid.profiles]:
            by_label: dict[str, str] = {}
            for c in expand(grid, profile).cells:
                assert by_label.setdefault(c.label, c.key) == c.key, (path.name, profile, c.label)


# -- item 6: small files, long waits ---------------------------------------------------------------------------------
def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    code, _, err, path = plan(tmp_path, HEAD + "# " + "x" * MAX_GRID_BYTES + "\n")
    assert_one_line(code, err, path, "larger than 1,048,576 bytes")


def test_a_dotted_key_of_many_parts_is_refused_before_parsing(tmp_path: Path) -> None:
    code, _, err, path = plan(tmp_path, HEAD + ".".join(["a"] * 20_000) + " = 1\n")
    assert_one_line(code, err, path, f"g.toml:8: a dotted key of more than {MAX_KEY_PARTS} parts")
    code, _, err, path = plan(tmp_path, HEAD + "[profiles . " + " . ".join(["p"] * 40) + "]\n")
    assert_one_line(code, err, path, "g.toml:8: a dotted key")


def test_a_long_key_is_refused_before_parsing(tmp_path: Path) -> None:
    code, _, err, path = plan(tmp_path, HEAD + '\n[profiles."' + ".".join(["p"] * 800) + '"]\ntrain.epochz = 2\n')
    assert_one_line(code, err, path, f"g.toml:9: a key of 1,610 characters, more than {MAX_KEY_CHARS}")


def test_the_error_line_of_a_quoted_dotted_profile_name_is_found(tmp_path: Path) -> None:
    """The old lookup tried every tail of the key's dotted parts against every line (32 s for 800 parts); now one
    pass over the lines. The key is cut in the error line, the line number is still right."""
    name = ".".join(["p"] * 450)  # 899 characters: under the key cap, so it reaches the lookup
    code, _, err, path = plan(tmp_path, HEAD + f'\n[profiles."{name}"]\ntrain.epochz = 2\n')
    assert_one_line(code, err, path, "g.toml:10: profiles.p.p.p", "unknown knob 'train.epochz'")
    ctx = _Ctx("g.toml", HEAD + f'\n[profiles."{name}"]\ntrain.epochz = 2\n')
    assert ctx.line_of(f"profiles.{name}.train.epochz") == 10 and ctx.line_of(f"profiles.{name}") == 9


# -- item 7: one line, not a traceback -----------------------------------------------------------------------------
def test_an_integer_tomllib_will_not_convert_is_one_line() -> None:
    """tomllib raises a ValueError of its own (not TOMLDecodeError) past 4,300 digits: through the real command."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.toml"
        path.write_text(HEAD + "train.epochs = " + "9" * 5000 + "\n")
        p = subprocess.run([str(SWEEPDAE), "plan", str(path), "--store", f"journal:{Path(d) / 's.journal'}"],
                           capture_output=True, text=True, cwd=d, timeout=120)
        assert_one_line(p.returncode, p.stderr, path, "g.toml:8: invalid TOML: an integer of more than")


OUT_OF_RANGE = {  # knob value: (key, range in the error line)
    "train.epochs = " + "9" * 4000: ("base.train.epochs", "must be an integer >= 1 and <= 100000"),
    "noise.num_steps = 1000000000000000000": ("base.noise.num_steps", ">= 1 and <= 100000, got 1000000000000000000"),
    "train.base_lr = 0.0": ("base.train.base_lr", "> 0 and <= 100"),
    "train.beta2 = 1.0": ("base.train.beta2", "> 0 and < 1"),
    "model.class_dropout = 1.5": ("base.model.class_dropout", ">= 0 and <= 1"),
    "train.checkpoint_every = 0": ("base.train.checkpoint_every", ">= 1"),
    "probe.knn_temperature = 0.0": ("base.probe.knn_temperature", "> 0"),
    "fid.num_samples = 1e400": ("base.fid.num_samples", "must be an integer"),
}


@pytest.mark.parametrize("setting", sorted(OUT_OF_RANGE))
def test_a_knob_out_of_its_range_is_refused_at_plan_time(tmp_path: Path, setting: str) -> None:
    key, says = OUT_OF_RANGE[setting]
    code, _, err, path = plan(tmp_path, HEAD + setting + "\n")
    assert_one_line(code, err, path, f"g.toml:8: {key}: ", says)


def test_a_huge_epoch_count_stops_a_dry_run_before_it_estimates(tmp_path: Path) -> None:
    """It passed `plan`, then `run --dry-run` raised OverflowError."""
    path = tmp_path / "g.toml"
    path.write_text(HEAD + "train.epochs = " + "9" * 4000 + "\n")
    p = subprocess.run([str(SWEEPDAE), "run", str(path), "--dry-run", "--store", f"journal:{tmp_path / 's.journal'}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_one_line(p.returncode, p.stderr, path, "base.train.epochs: ", "<= 100000")
    assert not (tmp_path / "s.journal").exists()


def test_seeds_past_the_seed_range_are_refused(tmp_path: Path) -> None:
    code, _, err, path = plan(tmp_path, HEAD.replace('name = "h"', 'name = "h"\nseeds = [0, 1099511627776]'))
    assert_one_line(code, err, path, "grid.seeds: must hold distinct integers >= 0 and <= 2147483647")


def test_a_tune_range_past_a_knob_range_is_refused(tmp_path: Path) -> None:
    text = HEAD + '\n[tune.params]\ntrain.epochs = { type = "int", low = 1, high = ' + "9" * 500 + " }\n"
    code, _, err, path = plan(tmp_path, text)
    assert_one_line(code, err, path, "tune.params.train.epochs.high: ")
    text = HEAD + '\n[tune.params]\ntrain.epochs = { type = "int", low = 1, high = 9, step = ' + "9" * 500 + " }\n"
    code, _, err, path = plan(tmp_path, text)
    assert_one_line(code, err, path, "tune.params.train.epochs.step: must be a positive integer, at most high - low")


# -- item 10: every value is checked whichever profile is planned; a value no plan uses is refused -----------------
@pytest.mark.parametrize("bad", ["-5", "999999999"])
@pytest.mark.parametrize("profile", [None, "paper", "demo", "smoke", "cpu", "cpu_fitted"])
def test_a_bad_value_every_profile_re_values_is_still_checked(tmp_path: Path, bad: str, profile: str | None) -> None:
    text = TOKENIZER_DIMS.replace("tokenizer.fit_epochs = [2, 2, 2, 2, 2]",
                                  f"tokenizer.fit_epochs = [{bad}, 2, 2, 2, 2]")
    assert text != TOKENIZER_DIMS
    code, _, err, path = plan(tmp_path, text, *(["--profile", profile] if profile else []))
    assert_one_line(code, err, path, "zip[0].tokenizer.fit_epochs: ", ">= 0 and <= 100000", f"got {bad}")


def test_the_shipped_tokenizer_dims_keeps_one_used_value_per_axis() -> None:
    """Its zip's base values were the dead [5, 5, 5, 5, 5] (every profile re-valued it): now smoke's own."""
    grid = load_grid(ROOT / "grids" / "tokenizer_dims.toml")
    assert "tokenizer" not in grid.profiles["smoke"].axes
    assert {c.recipe.tokenizer.fit_epochs for c in expand(grid, "smoke").cells} == {2}


DEAD = {  # case: (grid text, key named in the error, what the line says)
    "a zip every profile re-values": (
        TOKENIZER_DIMS.replace(  # the shipped grid as it was: smoke (the profile before cpu) re-valued the zip too
            "\n\n[profiles.cpu]\n",
            "\naxes.tokenizer = [[\"conv_vae\", \"global\", 2], [\"patch_vae\", \"global\", 2], "
            "[\"patch_ae\", \"global\", 2], [\"patch_pca\", \"global\", 2], [\"patch_pca\", \"per_dim\", 2]]"
            "\n\n[profiles.cpu]\n", 1),
        "g.toml:41: zip[0].tokenizer.name: ", "re-values axis 'tokenizer'"),
    "an axis every profile re-values": (
        HEAD.replace('name = "h"', 'name = "h"\ndefault_profile = "a"') + "\n[axes]\ntrain.epochs = [1, 2]\n"
        "\n[profiles.a]\naxes.epochs = [3, 4]\n\n[profiles.b]\naxes.epochs = [5, 6]\n",
        "g.toml:11: axes.train.epochs: ", "every profile (a, b) re-values axis 'epochs'"),
    "a base knob every profile overrides": (
        HEAD.replace('name = "h"', 'name = "h"\ndefault_profile = "a"') + "train.epochs = 7\n"
        "\n[profiles.a]\ntrain.epochs = 1\n\n[profiles.b]\ntrain.epochs = 2\n",
        "g.toml:9: base.train.epochs: ", "never used"),
    "grid seeds every profile replaces": (
        HEAD.replace('name = "h"', 'name = "h"\nseeds = [0, 1]\ndefault_profile = "a"')
        + "\n[profiles.a]\nseeds = [3]\n\n[profiles.b]\nseeds = [4]\n",
        "g.toml:3: grid.seeds: ", "sets its own seeds"),
}


@pytest.mark.parametrize("case", sorted(DEAD))
def test_a_value_no_plan_uses_is_refused_as_dead(tmp_path: Path, case: str) -> None:
    text, key, says = DEAD[case]
    code, _, err, path = plan(tmp_path, text)
    assert_one_line(code, err, path, key, says)


def test_base_values_are_live_without_a_default_profile() -> None:
    """No default profile: the plain plan reads the base values, so every profile may re-value them."""
    text = HEAD + ("train.epochs = 7\n\n[axes]\nprobe.epochs = [1, 2]\n\n[profiles.a]\ntrain.epochs = 1\n"
                   "axes.epochs = [3, 4]\n")
    grid = parse_grid(text, "g.toml")
    assert {c.recipe.train.epochs for c in expand(grid).cells} == {7}
    assert {c.recipe.probe.epochs for c in expand(grid, "a").cells} == {3, 4}


# -- the corpus: hostile grids kept as files ---------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "grids").glob("hostile_*.toml")), ids=lambda p: p.name)
def test_hostile_grid_files(path: Path, tmp_path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    code, _, err = cli("plan", str(path), "--store", f"journal:{tmp_path / 's.journal'}")
    assert_one_line(code, err, path, expected)
    assert not (tmp_path / "s.journal").exists()


def test_planning_cost_per_cell_does_not_include_type_hints_or_repeated_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planning a 20,000-cell grid took 35-102 s, 4 ms a cell, much of it `typing.get_type_hints` per recipe and keys
    recomputed: counted here, not timed (benchmarks/grid_planning.py times it). Type hints are read a fixed number of
    times whatever the number of cells, and each cell's key and train_key are computed once."""
    import typing

    import sweepdae.recipe as rc

    calls = {"hints": 0}
    real = typing.get_type_hints

    def counting(*a: object, **k: object) -> dict[str, object]:
        calls["hints"] += 1
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(rc.typing, "get_type_hints", counting)
    counts = []
    for n in (20, 200):
        calls["hints"] = 0
        text = HEAD + f"\n[axes]\ntrain.epochs = {list(range(1, n + 1))}\n"
        cells = expand(parse_grid(text, "g.toml")).cells
        assert len(cells) == n and len({c.key for c in cells}) == n
        before = calls["hints"]
        for c in cells:  # asked again (the runner, the store and the report each ask): nothing recomputed
            assert c.recipe.key() == c.key and c.recipe.train_key() == c.train_key
        assert calls["hints"] == before
        counts.append(before)
    assert counts[0] == counts[1], counts  # independent of the number of cells
