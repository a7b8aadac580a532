"""The regime gate and the design a finding's verdict is read under (REPRODUCTION.md, "The regime gate and seeds
until decided"), on synthetic multi-seed stores: the gate passes, fails (out_of_regime, the statistic still shown)
or is not measured (the verdict unchanged); a group-sequential design reads the verdict at its looks."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from _tables import list_table
from scipy import stats

from sweepdae.report.findings import GATE_BASELINE, compute_findings
from sweepdae.report.sequential import group_sequential
from sweepdae.report.tables import build_table

CLEAR = {"single": [60.0, 61.0, 59.5], "multi": [63.0, 64.2, 62.4]}  # agrees by the rule: +3.0 [+2.7, +3.3]


def _finding(values: dict[str, list[float]], rf: dict[str, list[float]] | None,
             design: dict[str, Any] | None = None) -> dict[str, Any]:
    g, rows = list_table("noise_levels", values, extra={GATE_BASELINE: rf} if rf else None,
                         findings=["multi_level_helps"])
    spec = {**g["spec"], **({"design": design} if design else {})}
    (v,) = compute_findings(spec, build_table(spec, pd.DataFrame(rows), g["cells"]))
    return v


def test_gate_passes_when_every_compared_cell_beats_the_baseline() -> None:
    rf = {"single": [55.0, 56.0, 55.5], "multi": [57.0, 58.0, 56.0]}
    v = _finding(CLEAR, rf)
    gate = v["gate"]
    # per seed: min(60 - 55, 63 - 57) = 5, min(61 - 56, 64.2 - 58) = 5, min(59.5 - 55.5, 62.4 - 56) = 4
    assert gate["per_seed"] == pytest.approx({"0": 5.0, "1": 5.0, "2": 4.0})
    m, s = 14 / 3, math.sqrt(((5 - 14 / 3) ** 2 * 2 + (4 - 14 / 3) ** 2) / 2)
    half = stats.t.ppf(0.975, 2) * s / math.sqrt(3)
    assert gate["value"] == pytest.approx(m) and gate["interval"] == pytest.approx([m - half, m + half])
    assert gate["passed"] is True and gate["baseline"] == GATE_BASELINE
    assert v["verdict"] == "agrees" and "rule_verdict" not in v and "regime gate passed" in v["ours"]
    assert v["design"] == {"kind": "fixed", "looks": [3], "alpha": 0.05, "max_seeds": 3, "spending": None}
    assert v["seeds_at_decision"] == 3 and "decided at 3 seeds" in v["ours"]


def test_gate_fails_and_the_verdict_is_out_of_regime_with_its_statistic_shown() -> None:
    rf = {"single": [62.0, 63.0, 61.0], "multi": [62.0, 63.0, 61.0]}  # single never beats its random reading
    v = _finding(CLEAR, rf)
    assert v["gate"]["passed"] is False and v["gate"]["interval"][1] < 0
    assert v["verdict"] == "out_of_regime" and v["rule_verdict"] == "agrees"
    assert v["value"] == pytest.approx(3.0333333) and v["interval"][0] > 0  # the statistic is still there
    assert "out of regime (the rule alone: agrees)" in v["ours"]
    assert v["seeds_at_decision"] == 3  # wholly below 0: more seeds cannot pass it


def test_a_gate_interval_holding_zero_fails_but_is_not_settled() -> None:
    rf = {"single": [59.0, 62.0, 58.0], "multi": [60.0, 60.0, 60.0]}  # gains +1, -1, +1.5 (min per seed)
    v = _finding(CLEAR, rf)
    lo, hi = v["gate"]["interval"]
    assert lo < 0 < hi and v["gate"]["passed"] is False and v["verdict"] == "out_of_regime"
    assert v["seeds_at_decision"] is None


def test_gate_not_measured_keeps_the_verdict_and_says_so() -> None:
    v = _finding(CLEAR, None)
    assert v["gate"]["passed"] is None and v["gate"]["value"] is None and v["gate"]["interval"] is None
    assert v["verdict"] == "agrees" and "regime gate not measured" in v["ours"]


def test_a_sequential_design_reads_its_looks_and_keeps_the_first_decision() -> None:
    """Looks at 3, 5, 8, 10 seeds: 3 seeds of a clear effect do not decide at the first look (its interval is at
    the nominal level of the O'Brien-Fleming-type boundary, about 99.97 %), 5 do; the verdict stays the one of the
    look at 5 when 8 seeds are there."""
    design = group_sequential(3, 10)
    three = _finding(CLEAR, None, design.to_json())
    assert three["verdict"] == "inconclusive" and three["seeds_at_decision"] is None
    assert three["confidence"] == pytest.approx(design.confidence(3)) and three["confidence"] > 0.999
    assert "undecided at 3 of at most 10 seeds" in three["ours"]
    more = {"single": [60.0, 61.0, 59.5, 60.2, 60.8, 60.0, 60.0, 60.0],
            "multi": [63.0, 64.2, 62.4, 63.1, 63.9, 57.0, 57.0, 57.0]}  # seeds 6-8 reverse the effect
    v = _finding(more, None, design.to_json())
    assert v["verdict"] == "agrees" and v["seeds_at_decision"] == 5 and v["seeds"] == 5
    assert v["design"]["kind"] == "group_sequential" and v["design"]["looks"] == [3, 5, 8, 10]
    assert v["confidence"] == pytest.approx(design.confidence(5))


# -- the gate's baseline: the untrained nonlinear reading of the tokens (sweepdae/cell/random_features.py) --------
def test_random_features_against_numpy_float64() -> None:
    import numpy as np
    import torch

    from sweepdae.cell.random_features import RandomFeaturesError, draw_random_features, random_features

    draws = draw_random_features(16, 64, 128, torch.Generator().manual_seed(7))
    x = torch.randn(5, 16, 64, generator=torch.Generator().manual_seed(1)) * 0.6
    got = random_features(x, draws)
    w, p, xs = (t.double().numpy() for t in (draws.weight, draws.position, x))
    want = np.maximum((xs + p[None]) @ w, 0.0).mean(axis=1)  # [B, width]
    assert got.shape == (5, 128) and got.dtype == torch.float32
    assert np.allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # the draws: W ~ N(0, 1/D), the position code ~ N(0, 1), the same for the same seed, others for another
    assert float(draws.weight.std()) == pytest.approx(1 / 8, rel=0.05)
    assert float(draws.position.std()) == pytest.approx(1.0, rel=0.1)
    again = draw_random_features(16, 64, 128, torch.Generator().manual_seed(7))
    other = draw_random_features(16, 64, 128, torch.Generator().manual_seed(8))
    assert torch.equal(again.weight, draws.weight) and torch.equal(again.position, draws.position)
    assert not torch.equal(other.weight, draws.weight)
    # a batch of one image reads the same as it does in a batch; bf16 tokens are read in float32
    assert torch.allclose(random_features(x[2:3], draws), got[2:3])
    assert random_features(x.bfloat16(), draws).dtype == torch.float32
    with pytest.raises(RandomFeaturesError):
        random_features(x[:, :8], draws)


def test_random_features_baseline_reads_the_cells_tokens_and_is_cached(tmp_path: Any) -> None:
    """measure_random_features: the features are the feature map on the cell's clean input tokens (drawn under
    seed + 2, at the model's width), probed the cell's way; a second call reads the cache; the identity leaves out
    the encoder's depth and t and the training knobs."""
    import torch
    from _digits import CPU, _digits

    from sweepdae.cell.baselines import (
        RANDOM_FEATURES,
        baseline_identity,
        baseline_key,
        measure_random_features,
        random_features_fn,
    )
    from sweepdae.cell.random_features import draw_random_features, random_features
    from sweepdae.data import to_unit_range
    from sweepdae.eval import linear_probe
    from sweepdae.objectives import make_model_input

    r, tok, train, test = _digits(tmp_path, **{"objective.input_space": "image"})
    x, _ = train.tensors()
    x = to_unit_range(x[:16])
    tokens = make_model_input(tok.encode(x), tokenizer=tok, objective=r.objective)  # [16, 4, 16]: 4 px patches
    want = random_features(tokens, draw_random_features(4, 16, 128, torch.Generator().manual_seed(r.seed + 2)))
    torch.testing.assert_close(random_features_fn(r, tok)(x, torch.zeros(16)), want)
    events: list[dict[str, Any]] = []
    cache = tmp_path / "rf"
    got = measure_random_features(r, tokenizer=tok, train=train, test=test, device=CPU, cache=cache,
                                  events=lambda **e: events.append(e))
    fn = random_features_fn(r, tok)
    (tr, te) = [(fn(to_unit_range(d.tensors()[0]), d.tensors()[1]), d.tensors()[1]) for d in (train, test)]
    ref = linear_probe(tr[0], tr[1], te[0], te[1], num_classes=train.num_classes, cfg=r.probe, seed=r.seed,
                       device=CPU)["probe_top1"]
    assert got == {"random_features_probe_top1": pytest.approx(ref, abs=1e-6)}
    assert [e["cached"] for e in events if "cached" in e] == [False]
    assert [p.name for p in cache.glob("*.json")] == [f"{baseline_key(r, RANDOM_FEATURES)}.json"]
    other = r.with_updates({"train.epochs": 5, "probe.t": 100, "probe.depth": 1})
    assert baseline_identity(other, RANDOM_FEATURES) == baseline_identity(r, RANDOM_FEATURES)
    events.clear()
    again = measure_random_features(other, tokenizer=tok, train=train, test=test, device=CPU, cache=cache,
                                    events=lambda **e: events.append(e))
    assert again == got and [e["cached"] for e in events if "cached" in e] == [True]
    wider = r.with_updates({"model.size": "tiny"})
    assert baseline_key(wider, RANDOM_FEATURES) != baseline_key(r, RANDOM_FEATURES)
