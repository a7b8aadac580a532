"""optuna-dashboard opens a sweepdae store meaningfully: grid cells carry their axis coordinates as params and the
probe accuracy as value (not 0.0), and a tune study its params and values. Read through optuna-dashboard's own
WSGI app (`optuna_dashboard.wsgi`), on the journal file as `optuna-dashboard sweepdae.journal` opens it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from sweepdae.grid import expand, parse_grid
from sweepdae.runner import cell_params, enqueue_plan
from sweepdae.store import open_store

optuna_dashboard = pytest.importorskip("optuna_dashboard")

GRID = """
[grid]
name = "dash"
seeds = [0, 1]

[base]
data.name = "digits"
data.image_size = 8
tokenizer.name = "patch_pca"
tokenizer.patch_size = 4

[axes]
tokenizer.latent_dim = { values = [2, 4], labels = ["16", "32"], name = "d" }
"""


def _get(app: Any, path: str) -> Any:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"], _, environ["QUERY_STRING"] = path.partition("?")
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), (status, body[:300])
    return json.loads(body)


def test_the_dashboard_shows_grid_cells_and_tune_trials_with_params_and_values(tmp_path: Path) -> None:
    path = tmp_path / "sweepdae.journal"
    plan = expand(parse_grid(GRID))
    assert cell_params(plan)[plan.cells[0].key] == {
        "dash/base/d": {"value": "16", "choices": ["16", "32"]},
        "dash/base/seed": {"value": "0", "choices": ["0", "1"]}}
    with open_store(f"journal:{path}") as s:
        enqueue_plan(s, plan, list(plan.cells))
        for i in range(len(plan.cells)):  # each cell done with a made-up result (nothing trains here)
            claim = s.claim("test:1")
            assert claim is not None
            s.complete(claim, metrics={"probe_top1": 50.0 + i, "knn_top1": 40.0}, info={})
        study = s.tune_study("sweepdae-tune:dash::probe_top1", direction="maximize", attrs={"metric": "probe_top1"})
        for d, v in (("16", 61.5), ("32", 58.25)):
            study.enqueue_trial({"d": d})
            t = study.ask()
            t.suggest_categorical("d", ["16", "32"])
            study.tell(t, v)
    app = optuna_dashboard.wsgi(str(path))
    studies = {st["study_name"]: st for st in _get(app, "/api/studies")["study_summaries"]}
    assert {"sweepdae", "sweepdae-tune:dash::probe_top1"} <= set(studies)

    cells = _get(app, f"/api/studies/{studies['sweepdae']['study_id']}?after=0")["trials"]
    assert len(cells) == 4
    seen = set()
    for t in cells:
        params = {p["name"]: p["param_external_value"] for p in t["params"]}
        assert set(params) == {"dash/base/d", "dash/base/seed"}
        seen.add((params["dash/base/d"], params["dash/base/seed"]))
        assert t["values"][0] >= 50.0  # the probe's top-1, not 0.0
    assert seen == {("16", "0"), ("16", "1"), ("32", "0"), ("32", "1")}

    tuned = _get(app, f"/api/studies/{studies['sweepdae-tune:dash::probe_top1']['study_id']}?after=0")["trials"]
    assert [({p["name"]: p["param_external_value"] for p in t["params"]}, t["values"]) for t in tuned] == [
        ({"d": "16"}, [61.5]), ({"d": "32"}, [58.25])]
