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

import sweepdae.runner  # run_cells: looked up at call time, where callers may replace it
from sweepdae.errors import StoreNotFound, SweepdaeError
from sweepdae.grid import Plan, expand
from sweepdae.grid.expand import under_profile
from sweepdae.report import build_report
from sweepdae.report.findings import decided
from sweepdae.report.sequential import Design, group_sequential
from sweepdae.runner import cell_params, runs_dir_for
from sweepdae.runner import estimate as est
from sweepdae.store import Store, open_store

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


def register_design(store: Store, plan: Plan, design: Design) -> None:
    """Register the grid at this look with its design in the spec (what `report` reads the verdicts under)."""
    store.register_grid(plan.grid.name, profile=plan.profile or "", spec={**plan.spec(), "design": design.to_json()},
                        cells=[{"key": c.key, "label": c.label, "coords": c.coords, "step": c.step, "seed": c.seed,
                                "train_key": c.train_key} for c in plan.cells])


def _resumed_look(store: Store, plan: Plan, design: Design) -> int:
    """The look a previous `--until-decided` run of this grid and design reached (else the first)."""
    for g in store.grids():
        spec = g.get("spec") or {}
        if (g.get("name") == plan.grid.name and (g.get("profile") or None) == plan.profile
                and spec.get("design") == design.to_json()):
            n = len(spec.get("seeds") or ())
            if n in design.looks:
                return n
    return design.looks[0]


def plan_rounds(plans: Sequence[Plan], max_seeds: int, store: Store | None = None) -> list[list[GridRound]]:
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


def _findings(store: Store, plan: Plan, runs_dir: Path | None) -> dict[str, tuple[str, int | None]]:
    report = build_report(store, [plan.grid.name], runs_dir=runs_dir)
    section = next((s for s in report.sections if (s.profile or None) == plan.profile), None)
    if section is None:
        raise SweepdaeError(f"{plan.grid.name}: the store has no report section for profile {plan.profile!r}")
    return {str(v["finding"]): (str(v["verdict"]), v.get("seeds_at_decision") if decided(v) else None)
            for v in section.findings}


def run_until_decided(store: Store, plans: Sequence[Plan], *, max_seeds: int, run_cells: RunCells,
                      runs_dir: Path | None = None, say: Callable[[str], None] = lambda _: None,
                      stopped: Callable[[], bool] = lambda: False) -> list[Outcome]:
    """Run each grid at its design's looks until its findings are decided or max_seeds is reached (see the
    module docstring); a round whose cells do not all end done stops the loop (its cells are in the store), and
    `stopped()` (Ctrl-C, a preemption) stops it at once, before the next grid."""
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
            if stopped():
                say(f"{plan.grid.name} ({plan.profile or 'base'}): stopped; run again to resume")
                return [outcomes[j] for j in sorted(outcomes)]
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


# -- what `sweepdae run --until-decided` calls ----------------------------------------------------------------------
def run_from_cli(url: str | None, plans: Sequence[Plan], *, max_seeds: int, runs_dir: str | None,
                 say: Callable[[str], None], **run_options: Any) -> bool:
    """`run --until-decided` on this machine's slots (`run_options`: those of `runner.run_cells`); prints each
    finding's verdict and the seeds at its decision; whether every cell of every round ended done."""
    interrupted = [False]

    def run(store: Store, plan: Plan, cells: list[Any]) -> bool:
        seeds = len({c.seed for c in cells})
        summary = sweepdae.runner.run_cells(store, cells, grid=plan.grid.name, profile=plan.profile,
                                            params=cell_params(plan),
                                            title=f"{plan.grid.name} ({plan.profile or 'base'}, {seeds} seeds)",
                                            runs_dir=runs_dir, **run_options)
        interrupted[0] = interrupted[0] or summary.interrupted  # Ctrl-C: the other grids wait too
        return summary.ok

    with open_store(url) as store:
        outcomes = run_until_decided(store, plans, max_seeds=max_seeds, run_cells=run,
                                     runs_dir=runs_dir_for(runs_dir), say=say, stopped=lambda: interrupted[0])
    if interrupted[0]:
        return False
    for out in outcomes:
        for name, (verdict, at) in out.findings.items():
            where = f"decided at {at} seeds" if at is not None else f"undecided at {len(out.seeds)} seeds"
            say(f"{out.grid} ({out.profile or 'base'}) {name}: {verdict}, {where} (looks {list(out.design.looks)})")
    return all(o.ok for o in outcomes)


def dry_run_from_cli(url: str | None, plans: Sequence[Plan], *, max_seeds: int, rate_tflops: float | None,
                     gpus: list[int], slots: int, say: Callable[[str], None]) -> None:
    """`run --until-decided --dry-run`: after the grids' own dry run (the first look), the seeds each later round
    would add and its estimated cost, as if every finding stayed undecided to the last look."""
    kind = "cuda" if gpus else "cpu"
    measured = None
    store: Store | None = None
    try:
        store = open_store(url, create=False)
    except StoreNotFound:
        store = None
    try:
        rounds = plan_rounds(plans, max_seeds, store)
        if store is not None and rate_tflops is None:
            measured = est.calibrate(store.cells().to_dict("records"), kind)
    finally:
        if store is not None:
            store.close()
    base = est.default_rate(kind, est.detect_gpu_name() if gpus else None)
    rate = (est.Rate(rate_tflops * 1e12, base.fixed_s, kind, "rate given with --rate", measured=False)
            if rate_tflops is not None else measured or base)
    for p in plans:
        d = design_for(p, max_seeds)
        say(f"--until-decided {p.grid.name} ({p.profile or 'base'}): group-sequential, looks at "
            f"{', '.join(map(str, d.looks))} seeds, alpha {d.alpha:g} (REPRODUCTION.md); a later round runs only "
            "for grids with an undecided finding")
    total = 0.0
    for i, rs in enumerate(rounds, 1):
        ests = est.estimate_grids([(r.grid, r.profile, r.cells, r.cells) for r in rs], trained=set(), rate=rate,
                                  devices=max(1, len(gpus)), slots=slots)
        for r, e in zip(rs, ests, strict=True):
            total += e.seconds
            say(f"round {i}: {r.grid} ({r.profile or 'base'}) to {r.look} seeds, adds seeds "
                f"{', '.join(map(str, r.seeds))}: {len(r.cells)} cells, {e.trainings} trainings, "
                f"{est.human_seconds(e.seconds)}")
    if rounds:
        say(f"every round, if no finding is decided before the last look: {est.human_seconds(total)} ({rate.source})")
