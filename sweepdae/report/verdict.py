"""A finding's verdict as data (`report.findings` computes it): the statistic over seeds on each readout, the regime
gate, the design it was read under, and one `to_json` that writes it into the report's data (`data/<grid>.json`).

A Verdict also reads as that JSON (`v["verdict"]`, `{**v}`), which is how the templates and the `--until-decided`
loop take it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sweepdae.report.sequential import Design

__all__ = ["Gate", "StepVerdict", "Summary", "Verdict"]


@dataclass
class Summary:
    """A per-seed statistic summarised over seeds: mean, interval, the seeds' values and the rule's verdict; `ours`
    is the text shown for a readout beside the deciding one."""

    value: float | None = None
    interval: list[float] | None = None
    seeds: int = 0
    per_seed: dict[str, float] = field(default_factory=dict)
    verdict: str = "inconclusive"
    ours: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "interval": self.interval, "seeds": self.seeds,
                               "per_seed": self.per_seed, "verdict": self.verdict}
        if self.ours is not None:
            out["ours"] = self.ours
        return out


@dataclass
class Gate:
    """The regime gate: the smallest gain of the compared cells over the untrained baseline, per seed; `passed`
    None when not measured (`note` says why)."""

    baseline: str
    statistic: str
    value: float | None = None
    interval: list[float] | None = None
    seeds: int = 0
    per_seed: dict[str, float] = field(default_factory=dict)
    passed: bool | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"baseline": self.baseline, "statistic": self.statistic, "value": self.value,
                               "interval": self.interval, "seeds": self.seeds, "per_seed": self.per_seed,
                               "passed": self.passed}
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass
class StepVerdict:
    """One trajectory step's change of accuracy over seeds, beside the paper's."""

    step: str
    value: float | None
    interval: list[float] | None
    seeds: int
    paper: float | None
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "value": self.value, "interval": self.interval, "seeds": self.seeds,
                "paper": self.paper, "verdict": self.verdict}


@dataclass(eq=False)
class Verdict(Mapping[str, Any]):
    """One finding on one grid. `kind` says which fields it has and their order in the JSON: "rule" (a statistic
    against a decision point), "trajectory" (a verdict per step) or "unknown" (a finding no check knows). The gate,
    design and seeds at the decision are set once the finding is judged (`design` not None)."""

    finding: str
    claim: str
    kind: str = "rule"
    readout: str = ""
    statistic: str = ""
    rule: str = ""
    confidence: float = 0.0
    paper: str = ""
    paper_value: float | None = None
    summary: Summary = field(default_factory=Summary)  # value, interval, seeds, per_seed and verdict
    readouts: dict[str, Summary] = field(default_factory=dict)  # the other readouts, shown but never deciding
    ours: str = ""
    steps: list[StepVerdict] = field(default_factory=list)
    metric: str | None = None  # a trajectory's metric, once it has cells
    gate: Gate | None = None
    rule_verdict: str | None = None  # the rule's verdict where the gate replaced it with out_of_regime
    design: Design | None = None
    seeds_at_decision: int | None = None

    @property
    def verdict(self) -> str:
        return self.summary.verdict

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        readouts = {k: r.to_json() for k, r in self.readouts.items()}
        out: dict[str, Any] = {"finding": self.finding, "claim": self.claim}
        if self.kind == "unknown":
            out.update(ours=self.ours, paper=self.paper, verdict=s.verdict, seeds=s.seeds, interval=s.interval,
                       readouts=readouts)
        elif self.kind == "trajectory":
            out.update(readout=self.readout, statistic=self.statistic, confidence=self.confidence, rule=self.rule,
                       value=s.value, interval=s.interval, seeds=s.seeds, per_seed=s.per_seed, verdict=s.verdict,
                       paper_value=self.paper_value, readouts=readouts, steps=[x.to_json() for x in self.steps])
            if self.metric is not None:
                out["metric"] = self.metric
            out.update(ours=self.ours, paper=self.paper)
        else:
            out.update(readout=self.readout, statistic=self.statistic, rule=self.rule, confidence=self.confidence,
                       paper=self.paper, paper_value=self.paper_value, value=s.value, interval=s.interval,
                       seeds=s.seeds, per_seed=s.per_seed, verdict=s.verdict, readouts=readouts, ours=self.ours)
        if self.design is not None:
            out["gate"] = self.gate.to_json() if self.gate is not None else None
            if self.rule_verdict is not None:
                out["rule_verdict"] = self.rule_verdict
            out.update(design=self.design.to_json(), seeds_at_decision=self.seeds_at_decision)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())
