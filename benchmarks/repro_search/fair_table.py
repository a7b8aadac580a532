"""The fair CPU test's verdicts as the README's table: for each finding the verdict (and the rule's own verdict when
the regime gate turns it into out_of_regime), its statistic with the look's interval, the regime gate, the seeds at
the decision and the paper's value. Read from the report data that `sweepdae report` writes.

    .venv/bin/python benchmarks/repro_search/fair_table.py [reports/examples/cpu_fair/data]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The README's numbering of the paper's findings (its table "What the CPU reproduction shows").
NAME = {"optimal_latent_dim": ("2a", "a low latent dim is optimal (the paper's d = 16..32 beat the rest)"),
        "unimodal_in_d": ("2b", "accuracy is unimodal in d"),
        "kl_unnecessary": ("3", "the KL term is unnecessary (patch PCA vs patch VAE)"),
        "multi_level_helps": ("4", "multi-level noise helps"),
        "image_prediction_ok": ("5", "predicting the image works about as well as predicting the latent"),
        "trajectory": ("–", "Tab. 3's step (first to last), as in the paper")}
GRIDS = ("tokenizer_dims", "noise_levels", "towards_dae")


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1f}"


def _span(value: float | None, ci: list[float] | None) -> str:
    return _num(value) if not ci else f"{_num(value)} [{_num(ci[0])}, {_num(ci[1])}]"


def row(f: dict[str, Any]) -> str:
    verdict = f["verdict"] if f["verdict"] != "out_of_regime" else f"out of regime (rule: {f.get('rule_verdict')})"
    conf = f.get("confidence") or 0.95
    gate = f["gate"]
    passed = {True: "passed", False: "failed", None: gate.get("note") or "not measured"}[gate["passed"]]
    design = f["design"]
    if f.get("seeds_at_decision") is not None:
        seeds = f"decided at {f['seeds_at_decision']}"
    else:
        seeds = f"undecided at {f['seeds']} of {design['max_seeds']}"
    number, name = NAME.get(f["finding"], ("?", f["claim"]))
    return (f"| {number} | {name} | **{verdict}** | "
            f"{_span(f['value'], f['interval'])} ({conf * 100:.1f}%) | {_span(gate['value'], gate['interval'])}, "
            f"{passed} | {seeds} | {_num(f.get('paper_value'))} |")


def main(folder: Path) -> None:
    print("| # | finding | verdict | statistic [interval] (level) | regime gate: smallest gain over random features "
          "| seeds | paper |")
    print("|---|---|---|---|---|---|---|")
    for grid in GRIDS:
        doc = json.loads((folder / f"{grid}.json").read_text())
        for section in doc["sections"]:
            if section["profile"] != "cpu_fair":
                continue
            for f in section["findings"]:
                print(row(f))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "reports" / "examples"
         / "cpu_fair" / "data")
