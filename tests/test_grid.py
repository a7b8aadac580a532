"""The grid language: expansion, profiles, labels, keys, and one-line errors for invalid grids."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweepdae.errors import GridError
from sweepdae.grid import expand, load_grid, parse_grid
from sweepdae.grid.spec import GridSpec
from sweepdae.recipe import recipe_from_flat

ROOT = Path(__file__).resolve().parent.parent

MINI = (Path(__file__).parent / "grids" / "mini.toml").read_text()  # also seeds the fuzzer of test_hardening


def test_product_exclude_seeds_and_labels() -> None:
    plan = expand(parse_grid(MINI, "mini.toml"))
    labels = [c.label for c in plan.cells]
    assert len(plan.cells) == (2 * 3 - 1) * 2
    assert "patch_pca d=8 seed=0" in labels and "patch_ae d=16 seed=1" in labels
    assert not any(c.label.startswith("patch_ae d=32") for c in plan.cells)
    assert len({c.key for c in plan.cells}) == len(plan.cells)
    cell = next(c for c in plan.cells if c.label == "patch_pca d=32 seed=1")
    assert cell.recipe.tokenizer.latent_dim == 8 and cell.recipe.seed == 1
    assert cell.coords == {"tokenizer": "patch_pca", "d": "32", "seed": "1"}


def test_zip_trajectory_include() -> None:
    text = """
[grid]
name = "z"
[base]
data.name = "digits"
data.image_size = 8
tokenizer.name = "pixel"
[[zip]]
data.image_size = [8, 16]
tokenizer.patch_size = [2, 4]
labels = ["48", "192"]
name = "pixel"
[[trajectory]]
label = "baseline"
[[trajectory]]
label = "clean target"
set = { objective.target = "z0" }
[[trajectory]]
label = "no input scaling"
set = { noise.schedule = "sigma_linear" }
[[include]]
label = "extra"
tokenizer.name = "patch_pca"
tokenizer.latent_dim = 4
"""
    plan = expand(parse_grid(text, "z.toml"))
    assert len(plan.cells) == 2 * 3 + 1
    steps = [c for c in plan.cells if c.coords.get("pixel") == "48"]
    assert [c.step for c in steps] == [0, 1, 2]
    # cumulative: the third step keeps the second step's change
    assert steps[2].recipe.objective.target.value == "z0" and steps[2].recipe.noise.schedule.value == "sigma_linear"
    assert steps[0].recipe.data.image_size == 8 and steps[0].recipe.tokenizer.patch_size == 2
    assert plan.cells[-1].label == "extra seed=0" and plan.cells[-1].recipe.tokenizer.name.value == "patch_pca"


def test_tokenizer_dims_has_the_papers_18_cells_and_the_per_dim_row() -> None:
    """Every profile but the reproduction ones (demo, cpu, cpu_fitted and cpu_fair keep fewer positions to fit their
    budgets, see tests/test_shipped_grids.py)."""
    g = load_grid(ROOT / "grids" / "tokenizer_dims.toml")
    for profile in sorted(set(g.profiles) - {"demo", "cpu", "cpu_fitted", "cpu_fair"}):
        plan = expand(g, profile)
        assert len(plan.cells) == 18 + 5, profile  # the paper's 18, and the 5 d of the per-dim PCA ablation row
        names = {(c.coords["tokenizer"], c.coords["d"]) for c in plan.cells}
        assert ("patch_vae", "128") not in names and ("patch_ae", "128") not in names
        assert ("conv_vae", "128") in names and ("patch_pca", "128") in names
        assert len([n for n in names if n[0] == "patch_pca per-dim"]) == 5


def test_paper_profile_is_the_papers_setting() -> None:
    plan = expand(load_grid(ROOT / "grids" / "tokenizer_dims.toml"), "paper")
    r = plan.cells[0].recipe
    assert (r.data.image_size, r.tokenizer.patch_size, r.model.size.value, r.train.epochs, r.train.batch_size) == (
        256, 16, "half_large", 400, 2048)
    assert sorted({c.recipe.tokenizer.latent_dim for c in plan.cells}) == [8, 16, 32, 64, 128]
    assert r.num_tokens() == 256


def test_same_recipe_from_two_grids_is_one_key() -> None:
    a = parse_grid(MINI, "a.toml")
    b_text = MINI.replace('name = "mini"', 'name = "other"').replace(
        'tokenizer.name = ["patch_pca", "patch_ae"]', 'tokenizer.name = ["patch_ae", "patch_pca"]')
    ka = {c.label: c.key for c in expand(a).cells}
    kb = {c.label: c.key for c in expand(parse_grid(b_text, "b.toml")).cells}
    assert ka == kb


knob_values = st.fixed_dictionaries({}, optional={
    "tokenizer.latent_dim": st.integers(1, 64),
    "train.epochs": st.integers(1, 50),
    "train.base_lr": st.floats(1e-6, 1e-2),
    "model.class_cond": st.booleans(),
    "noise.schedule": st.sampled_from(["ddpm_linear", "linear_gamma2", "sigma_linear"]),
    "probe.t": st.integers(0, 999),
    "seed": st.integers(0, 1000),
})


@settings(max_examples=60, deadline=None)
@given(knob_values, st.randoms())
def test_key_stable_under_reordering(flat: dict[str, object], rnd: random.Random) -> None:
    items = list(flat.items())
    rnd.shuffle(items)
    a, b = recipe_from_flat(flat), recipe_from_flat(dict(items))
    assert a.key() == b.key() == recipe_from_flat(a.flat()).key()


def test_key_is_stable_across_formatting() -> None:
    reformatted = MINI.replace("[base]\n", "[base]\n# a comment\n").replace(
        'data.name = "digits"', 'data = { name = "digits", image_size = 8 }').replace("data.image_size = 8\n", "")
    assert [c.key for c in expand(parse_grid(MINI)).cells] == [c.key for c in expand(parse_grid(reformatted)).cells]


# -- invalid grids: one line, file + key (+ line), exit 2, nothing stored ---------------------------------------------
MISTAKES = {
    "unknown knob with suggestion": (MINI.replace("model.size", "model.sise"), "did you mean 'model.size'"),
    "wrong type": (MINI.replace('data.image_size = 8', 'data.image_size = "8"'), "must be an integer"),
    "unknown registry name": (MINI.replace('"patch_ae"]', '"patch_aex"]'), "valid: pixel, patch_pca"),
    "PCA d larger than D": (MINI.replace("values = [2, 4, 8]", "values = [2, 4, 80]"),
                            "must be <= the patch dimension"),
    "image target without PCA": (MINI.replace('model.size = "micro"',
                                              'model.size = "micro"\nobjective.target = "image"\n'
                                              'objective.output_space = "image"'), "need tokenizer.name = 'patch_pca'"),
    "empty axis": (MINI.replace('tokenizer.name = ["patch_pca", "patch_ae"]', "tokenizer.name = []"), "no values"),
    "unknown section": (MINI + "\n[axis]\nx = 1\n", "unknown section"),
    "TOML syntax": (MINI + "\n[grid\n", "invalid TOML"),
    "duplicate key": (MINI.replace('model.size = "micro"', 'model.size = "micro"\nmodel.size = "tiny"'),
                      "invalid TOML"),
    "zip lengths differ": (MINI + "\n[[zip]]\ndata.image_size = [8, 16]\ntokenizer.patch_size = [4]\n",
                           "same length"),
    "missing grid table": (MINI.replace("[grid]\nname = \"mini\"\nseeds = [0, 1]\n", ""), "missing [grid]"),
    "bad seeds": (MINI.replace("seeds = [0, 1]", "seeds = [0, 0]"), "distinct"),
    "unknown profile axis": (MINI + "\n[profiles.smoke]\naxes.q = [1, 2, 3]\n", "no axis 'q'"),
    "profile axis length": (MINI + "\n[profiles.smoke]\naxes.d = [1, 2]\n", "array of 3 values"),
    "profile keeps an unknown label": (MINI + '\n[profiles.smoke]\naxes.d = { values = [1], labels = ["64"] }\n',
                                       "no label '64' on axis 'd'"),
    "profile keeps labels out of order": (MINI + '\n[profiles.smoke]\naxes.d = { values = [1, 2], labels = '
                                          '["16", "8"] }\n', "in the axis' order"),
    "profile kept values and labels differ": (MINI + '\n[profiles.smoke]\naxes.d = { values = [1], labels = '
                                              '["8", "16"] }\n', "array of 2 values"),
    "profile axis table key": (MINI + '\n[profiles.smoke]\naxes.d = { values = [1], labels = ["8"], x = 1 }\n',
                               "valid: labels, values"),
    "unknown report metric": (MINI + "\n[report]\nmetrics = [\"acc\"]\n", "unknown metric"),
    "guidance without classes": (MINI.replace('model.size = "micro"', 'model.size = "micro"\nfid.guidance_scale = 4.0'),
                                 "unconditional rows cannot use guidance"),
    "negative size": (MINI.replace('model.size = "micro"', 'model.size = "micro"\ndata.train_size = -5'), ">= 0"),
    "not utf-8": (b"\xff\xfe[grid]", "not UTF-8"),
    "report key nothing reads": (MINI + '\n[report]\npaper_rows = "tokenizer"\n', "unknown key"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_invalid_grid_library_error(tmp_path: Path, name: str) -> None:
    text, expected = MISTAKES[name]
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(GridError) as e:
        expand(load_grid(path))
    msg = str(e.value)
    assert str(path) in msg and expected in msg and "\n" not in msg


def test_a_profile_may_keep_a_subset_of_an_axis() -> None:
    """`axes.d = {values, labels}`: this profile's cells are those labels only, valued anew; others keep all."""
    text = MINI + '\n[profiles.small]\naxes.d = { values = [2, 8], labels = ["8", "32"] }\n'
    grid = parse_grid(text, "mini.toml")
    small, full = expand(grid, "small"), expand(grid)
    assert {c.coords["d"] for c in small.cells} == {"8", "32"} and {c.coords["d"] for c in full.cells} == {"8", "16",
                                                                                                            "32"}
    pca32 = next(c for c in small.cells if c.label == "patch_pca d=32 seed=0")
    assert pca32.recipe.tokenizer.latent_dim == 8
    assert not any(c.label.startswith("patch_ae d=32") for c in small.cells)  # the exclude still applies
    assert len(small.cells) == (2 * 2 - 1) * 2


def test_error_names_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINI.replace("model.size", "model.sise"))
    with pytest.raises(GridError) as e:
        load_grid(path)
    line = MINI.splitlines().index('model.size = "micro"') + 1
    assert f"bad.toml:{line}: base.model.sise: unknown knob" in str(e.value)


@pytest.mark.parametrize("name", ["unknown knob with suggestion", "TOML syntax", "PCA d larger than D", "not utf-8"])
@pytest.mark.parametrize("cmd", [["plan"], ["run", "--dry-run"], ["run"]])
def test_invalid_grid_cli(tmp_path: Path, name: str, cmd: list[str]) -> None:
    text, expected = MISTAKES[name]
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    store = tmp_path / "s.journal"
    p = subprocess.run([sys.executable, "-m", "sweepdae", *cmd, str(path), "--store", f"journal:{store}"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in p.stderr
    assert not store.exists()


def test_plan_json(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "sweepdae", "plan", str(ROOT / "grids" / "tokenizer_dims.toml"),
                        "--json", "--store", f"journal:{tmp_path / 's.journal'}"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["grid"] == "tokenizer_dims" and len(doc["cells"]) == 23
    assert {"key", "train_key", "label", "status", "schedule", "latent_scale", "probe_t", "upsampled",
            "recipe"} <= set(doc["cells"][0])
    assert doc["summary"] == "23 cells, 23 trainings (0 already trained)"
    assert all(c["status"] == "new" for c in doc["cells"])


# -- nothing a grid sets is silently dropped: refused with file:line: key, or honoured -------------------------------
TRAJ = '\n[[trajectory]]\nlabel = "a"\n[[trajectory]]\nlabel = "b"\nset = { model.class_cond = true }\n'
DISCARDED = {  # place: (grid text, the offending line, key, what the message says)
    "base seed": (MINI.replace('model.size = "micro"', 'model.size = "micro"\nseed = 3'), "seed = 3", "base.seed",
                  "grid.seeds"),
    "base knob an axis varies": (MINI.replace('model.size = "micro"', 'model.size = "micro"\ntokenizer.latent_dim = 4'),
                                 "tokenizer.latent_dim = 4", "base.tokenizer.latent_dim", "varied by axis 'd'"),
    "base knob the first step sets": (MINI + TRAJ.replace('label = "a"', 'label = "a"\nset = { model.size = "tiny" }'),
                                      'model.size = "micro"', "base.model.size", "first trajectory step"),
    "axis on seed": (MINI + "\n[axes.seed]\nvalues = [1, 2]\n", "[axes.seed]", "axes.seed", "grid.seeds"),
    "zip on seed": (MINI + "\n[[zip]]\nseed = [1, 2]\ntrain.epochs = [1, 2]\n", "seed = [1, 2]", "zip[0].seed",
                    "grid.seeds"),
    "base knob a zip varies": (MINI + "\n[[zip]]\nmodel.size = ['micro', 'tiny']\ntrain.epochs = [1, 2]\n",
                               'model.size = "micro"', "base.model.size", "varied by axis 'size+epochs'"),
    "trajectory step sets an axis knob": (
        MINI + TRAJ.replace("model.class_cond = true", "tokenizer.latent_dim = 2"),
        "set = { tokenizer.latent_dim = 2 }", "trajectory[1].set.tokenizer.latent_dim", "varied by axis 'd'"),
    "trajectory step sets seed": (MINI + TRAJ.replace("model.class_cond = true", "seed = 4"), "set = { seed = 4 }",
                                  "trajectory[1].set.seed", "grid.seeds"),
    "include with seed and seeds": (MINI + '\n[[include]]\nlabel = "x"\nseed = 1\nseeds = [2, 3]\n', "seeds = [2, 3]",
                                    "include[0].seeds", "not both"),
    "exclude on seed": (MINI + "\n[[exclude]]\nseed = 1\n", "seed = 1", "exclude[1].seed", "grid.seeds"),
    "exclude value no cell has": (MINI + '\n[[exclude]]\nmodel.size = "tiny"\n', 'model.size = "tiny"',
                                  "exclude[1].model.size", "never matches"),
    "profile seed": (MINI + "\n[profiles.demo]\ntrain.epochs = 2\nseed = 5\n", "seed = 5", "profiles.demo.seed",
                     "profiles.NAME.seeds"),
    "profile override of an axis knob": (MINI + "\n[profiles.demo]\ntrain.epochs = 2\ntokenizer.latent_dim = 3\n",
                                         "tokenizer.latent_dim = 3", "profiles.demo.tokenizer.latent_dim",
                                         "profiles.demo.axes.d = [...]"),
    "profile axes beside an override of the same knob": (
        MINI + "\n[profiles.demo]\naxes.d = [1, 2, 3]\ntokenizer.latent_dim = 2\n", "tokenizer.latent_dim = 2",
        "profiles.demo.tokenizer.latent_dim", "never used"),
}


@pytest.mark.parametrize("place", sorted(DISCARDED))
def test_a_knob_the_expansion_would_drop_is_refused(tmp_path: Path, place: str) -> None:
    text, line_text, key, expected = DISCARDED[place]
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(GridError) as e:
        expand(load_grid(path))
    line = text.splitlines().index(line_text) + 1
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: {key}: ") and expected in msg and "\n" not in msg, msg


def test_an_included_cell_keeps_its_own_seeds() -> None:
    text = MINI + ('\n[[include]]\nlabel = "one"\nseed = 7\ntokenizer.name = "pixel"\n'
                   '\n[[include]]\nlabel = "two"\nseeds = [8, 9]\ntokenizer.name = "pixel"\nmodel.class_cond = true\n'
                   '\n[[include]]\nlabel = "grid seeds"\ntokenizer.name = "pixel"\ntrain.epochs = 3\n'
                   "\n[profiles.demo]\nseeds = [5]\n")
    for profile, default_seeds in ((None, [0, 1]), ("demo", [5])):
        cells = {c.label: c for c in expand(parse_grid(text, "g.toml"), profile).cells if "include" in c.coords}
        assert sorted(cells) == sorted(["one seed=7", "two seed=8", "two seed=9",
                                        *(f"grid seeds seed={s}" for s in default_seeds)]), profile
        assert cells["one seed=7"].recipe.seed == 7 and cells["two seed=9"].recipe.seed == 9


def test_an_included_cell_reads_a_base_knob_that_an_axis_varies() -> None:
    text = MINI.replace('model.size = "micro"', 'model.size = "micro"\ntokenizer.latent_dim = 3') + (
        '\n[[include]]\nlabel = "pixel"\ntokenizer.name = "pixel"\n')
    cells = expand(parse_grid(text, "g.toml")).cells
    assert {c.recipe.tokenizer.latent_dim for c in cells if "include" in c.coords} == {3}
    assert {c.recipe.tokenizer.latent_dim for c in cells if "include" not in c.coords} == {2, 4, 8}


def test_exclude_matches_a_knob_left_at_its_default() -> None:
    text = MINI + '\n[[exclude]]\ntokenizer.name = "patch_pca"\nmodel.class_cond = false\n'
    labels = {c.label for c in expand(parse_grid(text, "g.toml")).cells}
    assert labels and not any(label.startswith("patch_pca") for label in labels)


def test_a_profile_exclude_cuts_that_profile_only() -> None:
    """[[profiles.NAME.exclude]]: the profile's own cuts (a budget's), by axis label or resolved value, on top of the
    grid's [[exclude]]; other profiles keep their cells; a pattern that can never match, or of a knob that is not
    one, is refused with its key."""
    text = MINI + ('\n[profiles.cut]\n[[profiles.cut.exclude]]\ntokenizer.name = "patch_pca"\n'
                   'tokenizer.latent_dim = ["8", "16"]\n[[profiles.cut.exclude]]\nmodel.class_cond = false\n'
                   'tokenizer.name = "patch_ae"\n[profiles.other]\n')
    grid = parse_grid(text, "g.toml")
    plain = {c.label for c in expand(grid).cells}
    assert {c.label for c in expand(grid, "other").cells} == plain
    assert {c.label for c in expand(grid, "cut").cells} == {x for x in plain if x.startswith("patch_pca d=32")}
    with pytest.raises(GridError, match=r"g\.toml:\d+: profiles\.cut\.exclude\[0\]\.tokenizer\.latent_dim: 7"):
        parse_grid(MINI + '\n[profiles.cut]\n[[profiles.cut.exclude]]\ntokenizer.latent_dim = 7\n', "g.toml")
    with pytest.raises(GridError, match=r"profiles\.cut\.exclude\[0\]\.model\.class_cond: no cell of any profile"):
        parse_grid(MINI + '\n[profiles.cut]\n[[profiles.cut.exclude]]\nmodel.class_cond = true\n', "g.toml")
    with pytest.raises(GridError, match=r"profiles\.cut\.exclude\[0\]\.model\.depth: unknown knob"):
        parse_grid(MINI + '\n[profiles.cut]\n[[profiles.cut.exclude]]\nmodel.depth = 3\n', "g.toml")
    with pytest.raises(GridError, match=r"profiles\.cut\.exclude.*must be an array of tables"):
        parse_grid(MINI + '\n[profiles.cut]\nexclude = 3\n', "g.toml")


@pytest.mark.parametrize("path", sorted((ROOT / "grids").glob("*.toml")), ids=lambda p: p.stem)
def test_the_stored_spec_reads_back_as_written(path: Path) -> None:
    grid = load_grid(path)
    for profile in [None, *grid.profiles]:
        plan = expand(grid, profile)
        stored = json.loads(json.dumps(plan.spec()))  # as a store returns it
        assert stored == plan.grid_spec().to_json()
        assert json.dumps(GridSpec.from_json(stored).to_json()) == json.dumps(stored)  # keys, order and values
        design = {"kind": "fixed", "looks": [3], "alpha": 0.05, "max_seeds": 3, "spending": None}
        assert GridSpec.from_json({**stored, "design": design}).to_json() == {**stored, "design": design}


def test_a_stored_spec_of_the_wrong_shape_reads_as_defaults() -> None:
    spec = GridSpec.from_json({"axes": {"x": [1]}, "steps": "abc", "seeds": "0", "report": [], "design": 3},
                              name="g")
    assert spec.name == "g" and spec.axes == () and spec.steps == () and spec.seeds is None and spec.design is None
    assert spec.report.metrics == ("probe_top1",) and spec.report.findings == ()
    assert "seeds" not in spec.to_json() and "design" not in spec.to_json()
