"""`sweepdae run GRID --until-decided [--max-seeds N]`: add seeds in rounds until each finding is decided.

The design is fixed before the first look (REPRODUCTION.md, "Seeds until decided"; `sweepdae.report.sequential`):
looks at n0 (the grid's seeds) ... N seeds, a group-sequential boundary with Lan-DeMets O'Brien-Fleming-type
spending. The loop registers the grid with that design in its stored spec (so `report` reads the verdicts at the
design's looks), runs the grid at its current look, reads its findings from the store (`report.build_report`) and,
while some finding is undecided and N is not reached, extends the grid to its next look: new seeds are the integers
after the grid's largest, added to every cell of the grid (a finding's statistic chooses among the table's
positions on seed means, so any of them can enter it). A grid with no undecided finding gets no more seeds.

Resuming: a grid whose stored spec carries this design resumes at the seeds registered there. A plain `run` of the
same grid re-registers it at its own seeds and without the design (the report then reads a fixed look again); run
it with `--until-decided` to go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweepdae.errors import SweepdaeError
from sweepdae.grid import Plan, expand
from sweepdae.grid.expand import under_profile
from sweepdae.report import build_report
from sweepdae.report.findings import decided
from sweepdae.report.sequential import Design, group_sequential

__all__ = ["GridRound", "Outcome", "plan_at", "plan_rounds", "register_design", "run_until_decided"]

# (store, plan at this look, its cells) -> whether every cell ended done (RunSummary.ok for the real runner)
RunCells = Callable[[Any, Plan, list[Any]], bool]


@dataclass(frozen=True)
class GridRound:
    """One round of one grid: the look it brings the grid to, the seeds it adds and their new cells."""

    grid: str
    profile: str | None
    look: int
    seeds: tuple[int, ...]
    cells: tuple[Any, ...]


@dataclass
class Outcome:
    """Where a grid stands after the loop: its design, seeds, findings (name -> verdict, seeds at the decision)."""

    grid: str
    profile: str | None
    design: Design
    seeds: tuple[int, ...]
    findings: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    ok: bool = True  # every cell of every round done

    @property
    def undecided(self) -> list[str]:
        return [k for k, (_, at) in self.findings.items() if at is None]


def base_seeds(plan: Plan) -> tuple[int, ...]:
    return tuple(sorted(under_profile(plan.grid, plan.profile)[3]))


def design_for(plan: Plan, max_seeds: int) -> Design:
    return group_sequential(len(base_seeds(plan)), max_seeds)


def seeds_at(plan: Plan, look: int) -> tuple[int, ...]:
    """The grid's own seeds, then the integers after its largest, `look` in all."""
    base = base_seeds(plan)
    return base[:look] + tuple(range(max(base) + 1, max(base) + 1 + look - len(base)))


def plan_at(plan: Plan, seeds: Sequence[int]) -> Plan:
    """The plan's grid (under its profile) expanded at `seeds` instead of its own ([[include]] cells with seeds of
    their own keep them)."""
    grid = plan.grid
    seeds = tuple(seeds)
    if plan.profile and grid.profiles[plan.profile].seeds:
        profiles = {**grid.profiles, plan.profile: dataclasses.replace(grid.profiles[plan.profile], seeds=seeds)}
        grid = dataclasses.replace(grid, profiles=profiles)
    else:
        grid = dataclasses.replace(grid, seeds=seeds)
    return expand(grid, plan.profile)


def register_design(store: Any, plan: Plan, design: Design) -> None:
    """Register the grid at this look with its design in the spec (what `report` reads the verdicts under)."""
    store.register_grid(plan.grid.name, profile=plan.profile or "", spec={**plan.spec(), "design": design.to_json()},
                        cells=[{"key": c.key, "label": c.label, "coords": c.coords, "step": c.step, "seed": c.seed,
                                "train_key": c.train_key} for c in plan.cells])


def _resumed_look(store: Any, plan: Plan, design: Design) -> int:
    """The look a previous `--until-decided` run of this grid and design reached (else the first)."""
    for g in store.grids():
        spec = g.get("spec") or {}
        if (g.get("name") == plan.grid.name and (g.get("profile") or None) == plan.profile
                and spec.get("design") == design.to_json()):
            n = len(spec.get("seeds") or ())
            if n in design.looks:
                return n
    return design.looks[0]


def plan_rounds(plans: Sequence[Plan], max_seeds: int, store: Any | None = None) -> list[list[GridRound]]:
    """Every round the loop could run (each grid at each look after its current one, as if no finding were
    decided before max_seeds), grouped by round: what `--dry-run` shows."""
    per_grid: list[list[GridRound]] = []
    for plan in plans:
        design = design_for(plan, max_seeds)
        look = _resumed_look(store, plan, design) if store is not None else design.looks[0]
        seen = {c.key for c in plan_at(plan, seeds_at(plan, look)).cells}
        rounds = []
        nxt = design.next_look(look)
        while nxt is not None:
            cells = tuple(c for c in plan_at(plan, seeds_at(plan, nxt)).cells if c.key not in seen)
            seen |= {c.key for c in cells}
            rounds.append(GridRound(plan.grid.name, plan.profile, nxt, seeds_at(plan, nxt)[look:], cells))
            look, nxt = nxt, design.next_look(nxt)
        per_grid.append(rounds)
    depth = max((len(r) for r in per_grid), default=0)
    return [[r[i] for r in per_grid if i < len(r)] for i in range(depth)]


def _findings(store: Any, plan: Plan, runs_dir: Path | None) -> dict[str, tuple[str, int | None]]:
    report = build_report(store, [plan.grid.name], runs_dir=runs_dir)
    section = next((s for s in report.sections if (s.profile or None) == plan.profile), None)
    if section is None:
        raise SweepdaeError(f"{plan.grid.name}: the store has no report section for profile {plan.profile!r}")
    return {str(v["finding"]): (str(v["verdict"]), v.get("seeds_at_decision") if decided(v) else None)
            for v in section.findings}


def run_until_decided(store: Any, plans: Sequence[Plan], *, max_seeds: int, run_cells: RunCells,
                      runs_dir: Path | None = None, say: Callable[[str], None] = lambda _: None) -> list[Outcome]:
    """Run each grid at its design's looks until its findings are decided or max_seeds is reached (see the
    module docstring); a round whose cells do not all end done stops the loop (its cells are in the store)."""
    designs = [design_for(plan, max_seeds) for plan in plans]
    looks = [_resumed_look(store, plan, design) for plan, design in zip(plans, designs, strict=True)]
    outcomes: dict[int, Outcome] = {}
    active = list(range(len(plans)))
    while active:
        still = []
        for i in active:
            plan, design, look = plans[i], designs[i], looks[i]
            seeds = seeds_at(plan, look)
            at_look = plan_at(plan, seeds)
            register_design(store, at_look, design)
            ok = run_cells(store, at_look, list(at_look.cells))
            found = _findings(store, plan, runs_dir)
            out = Outcome(plan.grid.name, plan.profile, design, seeds, found, ok)
            outcomes[i] = out
            name = f"{plan.grid.name} ({plan.profile or 'base'})"
            nxt = design.next_look(look)
            if not ok:
                say(f"{name}: some cells at {look} seeds did not finish; stopping (run again to resume)")
                continue
            if not out.undecided:
                say(f"{name}: every finding decided at {look} seeds")
            elif nxt is None:
                say(f"{name}: {', '.join(out.undecided)} undecided at the design's last look ({look} seeds)")
            else:
                say(f"{name}: {', '.join(out.undecided)} undecided at {look} seeds; adding seeds "
                    f"{', '.join(map(str, seeds_at(plan, nxt)[look:]))} (look at {nxt} of {design.looks})")
                looks[i] = nxt
                still.append(i)
        if any(not outcomes[i].ok for i in active):
            break
        active = still
    return [outcomes[i] for i in sorted(outcomes)]
