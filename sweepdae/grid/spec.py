"""What the store keeps about a planned grid (`Plan.grid_spec()`), so that a report lays it out without the file.

`GridSpec.to_json` writes the stored form and `GridSpec.from_json` reads it back. The reader takes whatever a store
holds (a shared store, an older sweepdae): a missing or mistyped value reads as its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sweepdae.grid.schema import ReportSpec, _strs

__all__ = ["AxisSpec", "GridSpec"]


def _text(d: Mapping[str, Any], key: str) -> str:
    return str(d.get(key) or "")


@dataclass(frozen=True)
class AxisSpec:
    """An axis as a report lays it out: its name, the knobs it sets and its labels in the grid's order."""

    name: str
    paths: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "paths": list(self.paths), "labels": list(self.labels)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AxisSpec:
        return cls(name=str(d.get("name")), paths=_strs(d.get("paths")), labels=_strs(d.get("labels")))


@dataclass(frozen=True)
class GridSpec:
    """A grid under one profile, as planned: its text, axes, trajectory steps, seeds and `[report]` table."""

    name: str
    title: str = ""
    description: str = ""
    mirrors: str = ""  # the paper table or figure it mirrors (report.paper.PAPER key)
    profile: str | None = None
    profile_description: str = ""
    axes: tuple[AxisSpec, ...] = ()
    steps: tuple[str, ...] = ()  # trajectory step labels, in order
    seeds: tuple[int, ...] | None = None  # the seeds of the plan's cells; None: no plan (the cells of tune trials)
    report: ReportSpec = field(default_factory=ReportSpec)
    path: str = ""  # grid.expand.shown_path of the grid file
    # `run --until-decided`: the design its verdicts are read under (report.sequential.Design.to_json())
    design: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "title": self.title, "description": self.description,
                               "mirrors": self.mirrors, "profile": self.profile,
                               "profile_description": self.profile_description,
                               "axes": [a.to_json() for a in self.axes], "steps": list(self.steps)}
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
        out["report"] = self.report.to_json()
        out["path"] = self.path
        if self.design is not None:
            out["design"] = dict(self.design)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, name: str = "") -> GridSpec:
        """The stored spec; `name` when it names none."""
        seeds, design, axes, profile = d.get("seeds"), d.get("design"), d.get("axes"), d.get("profile")
        return cls(name=str(d["name"]) if "name" in d else name, title=_text(d, "title"),
                   description=_text(d, "description"), mirrors=_text(d, "mirrors"),
                   profile=str(profile) if profile is not None else None,
                   profile_description=_text(d, "profile_description"),
                   axes=tuple(AxisSpec.from_json(a) for a in (axes if isinstance(axes, list) else ())
                              if isinstance(a, Mapping)),
                   steps=_strs(d.get("steps")),
                   seeds=tuple(s for s in seeds if isinstance(s, int)) if isinstance(seeds, list) else None,
                   report=ReportSpec.from_json(d.get("report")), path=_text(d, "path"),
                   design=design if isinstance(design, Mapping) else None)

    @classmethod
    def of(cls, spec: GridSpec | Mapping[str, Any]) -> GridSpec:
        """`spec` as a GridSpec: itself, or read from its stored form."""
        return spec if isinstance(spec, GridSpec) else cls.from_json(spec)
