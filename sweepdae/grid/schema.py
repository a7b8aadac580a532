"""Parse and validate a grid TOML file into a frozen `Grid` (the edge where bad input is rejected).

The grid language (README "Writing a grid" has a worked example):

    [grid]       name, title, description, mirrors (paper table/figure id), seeds, default_profile
    [base]       knob defaults for every cell (dotted keys: tokenizer.latent_dim = 32)
    [axes]       product axes: knob = [values] or knob = {values = [...], labels = [...], name = "d"}
    [[zip]]      knobs varying together: {knob = [...], knob2 = [...], labels = [...], name = "..."}
    [[trajectory]] ordered cumulative steps: {label = "...", set = {knob = value, ...}}
    [[include]]  extra cells: {label = "...", seed = N or seeds = [...], knob = value, ...}; an included cell
                 is base + profile + its own knobs (no axis, step or exclude applies), with its own seeds if given
    [[exclude]]  patterns: {knob = value or [values]}; a cell matching every knob of a pattern is dropped.
                 For a knob on an axis the pattern names the axis *label* (e.g. the paper's d), so one pattern
                 serves every profile; other knobs match the cell's resolved value.
    [profiles.NAME] knob overrides, plus optional axes = {...} (new values per axis, or
                 {values = [...], labels = [...]} for a subset of its labels), seeds, description, and
                 [[profiles.NAME.exclude]] patterns that drop cells of this profile only (a budget's cuts)
    [report]     rows, cols, metrics, findings

Nothing a grid sets is silently dropped: a knob that the expansion would overwrite in every cell that reads it
(a base or profile knob that an axis varies, an axis knob that a trajectory step sets, `seed` outside
[grid]/[profiles]/[[include]]), an exclude value that no cell can have, or a value that no plan uses (with a
default profile, a base knob or axis that every profile replaces) is refused with `file:line: key`. Every value is
checked against its knob's type and range (recipe.Bounds) whichever profile is planned.

One label, one recipe: a report row averages the cells of one label as seeds, so an axis' labels are distinct and
two grid points whose recipes differ by more than the seed never share a label (`expand` refuses them).

Hostile files: the text is capped (MAX_GRID_BYTES, MAX_KEY_CHARS, MAX_KEY_PARTS) by a linear scan before tomllib
sees it, and the error-line lookup is linear in the file and the key.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweepdae.errors import GridError
from sweepdae.grid._source import (
    MAX_GRID_BYTES,
    MAX_KEY_CHARS,
    MAX_KEY_PARTS,
    _check_size,
    _Ctx,
    _shorten,
    _str,
    _table,
    _tname,
    tomllib,
)
from sweepdae.grid._values import MAX_AXIS_VALUES, _check_knob, _flatten, _fmt, _knob_table, _no_seed, _seeds
from sweepdae.grid.slurm import (
    PER_GPU_KEYS,
    SLURM_KEYS,
    SLURM_STRINGS,
    check_option_strings,
    check_slurm_options,
    layer_slurm_options,
)
from sweepdae.grid.tune import TuneParam, TuneSpec, parse_tune
from sweepdae.metrics import FINDINGS, METRICS
from sweepdae.recipe import KNOBS, suggest
from sweepdae.utils import plain

# What callers import from here; the parts of the language live in _source, _values, slurm and tune.
__all__ = ["FINDINGS", "MAX_AXIS_VALUES", "MAX_CELLS", "MAX_GRID_BYTES", "MAX_KEY_CHARS", "MAX_KEY_PARTS", "METRICS",
           "PER_GPU_KEYS", "SLURM_KEYS", "SLURM_STRINGS", "Axis", "Grid", "Profile", "ReportSpec", "SlurmSpec", "Step",
           "TuneParam", "TuneSpec", "check_option_strings", "check_slurm_options", "layer_slurm_options", "load_grid",
           "parse_grid", "tomllib"]

MAX_CELLS = 20_000
_TOP_KEYS = {"grid", "base", "axes", "zip", "trajectory", "include", "exclude", "profiles", "report", "slurm", "tune"}
_GRID_KEYS = {"name", "title", "description", "mirrors", "seeds", "default_profile"}
_REPORT_KEYS = {"rows", "cols", "metrics", "findings"}
_PROFILE_EXTRA = {"axes", "seeds", "description", "slurm", "exclude"}


@dataclass(frozen=True)
class Axis:
    """One product or zipped axis: every position sets one value for each of its knobs."""

    name: str  # short name used in labels (e.g. "d")
    paths: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]  # values[i] = the knobs' values at position i
    labels: tuple[str, ...]
    bare: bool  # label shows the value alone (strings like tokenizer names) instead of name=value

    def label_at(self, i: int) -> str:
        return self.labels[i] if self.bare else f"{self.name}={self.labels[i]}"


@dataclass(frozen=True)
class Step:
    """A trajectory step: the knobs it changes relative to the previous step."""

    label: str
    set: dict[str, Any]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: dict[str, Any]
    axes: dict[str, tuple[Any, ...]]  # axis name -> new values (same labels by position, or those of `keep`)
    seeds: tuple[int, ...] | None
    keep: dict[str, tuple[str, ...]] = field(default_factory=dict)  # axis name -> the labels this profile keeps
    # `[profiles.NAME.slurm]`: SLURM options of this profile's jobs, over the grid's `[slurm]` (a paper-scale
    # profile asks for a node's share of CPUs and days; a CPU profile for minutes)
    slurm: dict[str, Any] = field(default_factory=dict)
    # `[[profiles.NAME.exclude]]`: patterns as the grid's [[exclude]], dropping cells of this profile only
    exclude: tuple[dict[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class ReportSpec:
    """A grid's `[report]` table: what its report's rows and columns are, its metrics and its findings."""

    rows: str | None = None  # knob path, axis name or "step"
    cols: str | None = None
    metrics: tuple[str, ...] = ("probe_top1",)
    findings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "cols": self.cols, "metrics": list(self.metrics), "findings": list(self.findings)}

    @classmethod
    def from_json(cls, d: Any) -> ReportSpec:
        """The stored table (grid.spec.GridSpec); a missing or mistyped value reads as its default."""
        d = d if isinstance(d, Mapping) else {}
        rows, cols = d.get("rows"), d.get("cols")
        return cls(rows=rows if isinstance(rows, str) else None, cols=cols if isinstance(cols, str) else None,
                   metrics=_strs(d.get("metrics")) or ("probe_top1",), findings=_strs(d.get("findings")))


def _strs(v: Any) -> tuple[str, ...]:
    """A stored array as strings; anything else as none."""
    return tuple(str(x) for x in v) if isinstance(v, (list, tuple)) else ()


@dataclass(frozen=True)
class SlurmSpec:
    """A grid's `[slurm]` table: options for every job, and per axis value (`[slurm.by.AXIS."LABEL"]`) options for
    the jobs of the cells at that value (a bigger model needs more time and GPUs)."""

    options: dict[str, Any] = field(default_factory=dict)
    by: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # axis name -> label -> options

    def with_profile(self, profile: Profile | None) -> SlurmSpec:
        """The spec a profile's jobs get: the profile's `[profiles.NAME.slurm]` options over the grid's."""
        if profile is None or not profile.slurm:
            return self
        return SlurmSpec(options=layer_slurm_options(self.options, profile.slurm), by=self.by)


@dataclass(frozen=True)
class Grid:
    """A validated grid file."""

    path: str
    name: str
    title: str
    description: str
    mirrors: str
    seeds: tuple[int, ...]
    default_profile: str | None
    base: dict[str, Any]
    axes: tuple[Axis, ...]
    trajectory: tuple[Step, ...]
    include: tuple[dict[str, Any], ...]
    exclude: tuple[dict[str, tuple[Any, ...]], ...]
    profiles: dict[str, Profile]
    report: ReportSpec
    source: str = field(repr=False, default="")
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    tune: TuneSpec = field(default_factory=TuneSpec)


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; raises GridError with file, key and line on any mistake."""
    p = Path(path)
    name = str(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_GRID_BYTES + 1)  # no more: a 50 MB file is refused without reading it all
    except FileNotFoundError:
        raise GridError(f"{name}: no such grid file") from None
    except OSError as e:
        raise GridError(f"{name}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_GRID_BYTES:
        raise GridError(f"{name}: the grid file is larger than {MAX_GRID_BYTES:,} bytes ({MAX_GRID_BYTES >> 20} "
                        "MiB); a grid file is a few KB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GridError(f"{name}: not UTF-8 text (byte {e.start})") from None
    return parse_grid(text, name)


def parse_grid(text: str, path: str = "<grid>") -> Grid:
    _check_size(text, path)
    ctx = _Ctx(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e).splitlines()[0] if str(e) else "invalid TOML"
        m = re.search(r"line (\d+)", msg)
        where = f"{path}:{m.group(1)}" if m else path
        raise GridError(f"{where}: invalid TOML: {msg}") from None
    except RecursionError:
        raise GridError(f"{path}: invalid TOML: nesting too deep") from None
    except ValueError:  # tomllib lets int() refuse an integer of more than sys.get_int_max_str_digits() digits
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        m = re.search(r"[0-9][0-9_]{" + str(max(limit - 1, 0)) + ",}", text)
        where = f"{path}:{text.count(chr(10), 0, m.start()) + 1}" if m else path
        raise GridError(f"{where}: invalid TOML: an integer of more than {limit} digits; no knob takes one"
                        ) from None
    try:
        return _build(doc, ctx, text)
    except RecursionError:
        raise GridError(f"{path}: nesting too deep") from None


def _build(doc: dict[str, Any], ctx: _Ctx, text: str) -> Grid:
    for k in doc:
        if k not in _TOP_KEYS:
            raise ctx.error(k, f"unknown section{suggest(k, _TOP_KEYS)}; valid: {', '.join(sorted(_TOP_KEYS))}")
    g = _table(doc.get("grid"), "grid", ctx, required=True)
    for k in g:
        if k not in _GRID_KEYS:
            raise ctx.error(f"grid.{k}", f"unknown key{suggest(k, _GRID_KEYS)}; valid: {', '.join(sorted(_GRID_KEYS))}")
    name = _str(g.get("name"), "grid.name", ctx, required=True)
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", name):
        raise ctx.error("grid.name", f"must be 1-64 letters, digits, '_' or '-', got {name!r}")
    seeds = _seeds(g.get("seeds", [0]), "grid.seeds", ctx)
    base = _knob_table(doc.get("base", {}), "base", ctx)
    product = _product_axes(doc.get("axes", {}), ctx)
    axes = list(product) + list(_zip_axes(doc.get("zip", []), ctx))
    names = [a.name for a in axes]
    for a in axes:
        if names.count(a.name) > 1:
            raise ctx.error(f"axes.{a.name}", "two axes share this name; give one of them name = \"...\"")
    seen: set[str] = set()
    for a in axes:
        for p in a.paths:
            if p in seen:
                raise ctx.error(p, "knob varied by two axes")
            seen.add(p)
    trajectory = tuple(_trajectory(doc.get("trajectory", []), ctx))
    include = tuple(_include(doc.get("include", []), ctx))
    exclude = tuple(_exclude(doc.get("exclude", []), ctx, axes))
    profiles = _profiles(doc.get("profiles", {}), axes, ctx)
    _check_overwrites(base, axes, trajectory, include, exclude, profiles, ctx)
    default_profile = g.get("default_profile")
    if default_profile is not None:
        _str(default_profile, "grid.default_profile", ctx)
        if default_profile not in profiles:
            raise ctx.error("grid.default_profile", f"no profile {default_profile!r}; defined: "
                            + (", ".join(profiles) or "none"))
    _check_dead(g, base, axes, len(product), profiles, default_profile, ctx)
    report = _report(doc.get("report", {}), axes, ctx)
    slurm = _slurm(doc.get("slurm", {}), axes, ctx)
    tune = parse_tune(doc.get("tune", {}), ctx)
    return Grid(path=ctx.path, name=name, title=_str(g.get("title", name), "grid.title", ctx), slurm=slurm, tune=tune,
                description=_str(g.get("description", ""), "grid.description", ctx),
                mirrors=_str(g.get("mirrors", ""), "grid.mirrors", ctx), seeds=seeds,
                default_profile=default_profile, base=base, axes=tuple(axes), trajectory=trajectory,
                include=include, exclude=exclude, profiles=profiles, report=report, source=text)


# -- pieces -------------------------------------------------------------------------------------------------------
def _values(v: Any, key: str, path: str, ctx: _Ctx) -> list[Any]:
    if not isinstance(v, list):
        raise ctx.error(key, f"axis values must be an array, got {_tname(v)}")
    if not v:
        raise ctx.error(key, "axis has no values (an empty axis would expand to no cells)")
    if len(v) > MAX_AXIS_VALUES:
        raise ctx.error(key, f"axis has {len(v)} values, more than {MAX_AXIS_VALUES}")
    vals = [_check_knob(path, x, key, ctx) for x in v]
    if len({repr(x) for x in vals}) != len(vals):
        raise ctx.error(key, "axis repeats a value")
    return vals


def _labels(v: Any, n: int, key: str, ctx: _Ctx, default: list[Any]) -> tuple[str, ...]:
    if v is None:
        labels = tuple(_fmt(x) for x in default)
    elif not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v) or len(v) != n:
        raise ctx.error(key, f"labels must be an array of {n} strings, one per value")
    else:
        labels = tuple(str(x) for x in v)
    # a report row gathers the cells of one label as seeds of one recipe: two values under one label would be
    # averaged together
    seen: set[str] = set()
    for lab in labels:
        if lab in seen:
            raise ctx.error(key, f"two values of the axis have the label {_shorten(lab)!r}; each value needs its own "
                            "label (a report would average them as seeds of one row)")
        seen.add(lab)
    return labels


def _product_axes(v: Any, ctx: _Ctx) -> list[Axis]:
    t = _table(v, "axes", ctx)
    out = []
    for path, spec in _flatten(t):
        key = f"axes.{path}"
        _no_seed(path, key, ctx)
        if path not in KNOBS:
            raise ctx.error(key, f"unknown knob {path!r}{suggest(path, KNOBS)}")
        if isinstance(spec, dict):
            unknown = set(spec) - {"values", "labels", "name"}
            if unknown:
                raise ctx.error(f"{key}.{sorted(unknown)[0]}", "unknown axis key; valid: values, labels, name")
            vals = _values(spec.get("values"), key + ".values", path, ctx)
            labels = _labels(spec.get("labels"), len(vals), key + ".labels", ctx, vals)
            name = _str(spec.get("name", _short(path)), key + ".name", ctx)
        else:
            vals = _values(spec, key, path, ctx)
            labels = _labels(None, len(vals), key, ctx, vals)
            name = _short(path)
        out.append(Axis(name=name, paths=(path,), values=tuple((x,) for x in vals), labels=labels,
                        bare=_bare(labels)))
    return out


def _bare(labels: tuple[str, ...]) -> bool:
    """Words read on their own in a cell label ("patch_pca"); numbers get the axis name ("d=32")."""
    return not any(re.fullmatch(r"[-+0-9.eE/x]+|on|off", lab) for lab in labels)


def _short(path: str) -> str:
    """Default axis name: the knob's last part, or its section for `*.name` knobs (tokenizer.name -> tokenizer)."""
    section, _, leaf = path.rpartition(".")
    return section if leaf == "name" and section else leaf


def _zip_axes(v: Any, ctx: _Ctx) -> list[Axis]:
    if not isinstance(v, list):
        raise ctx.error("zip", "must be an array of tables ([[zip]])")
    out = []
    for i, z in enumerate(v):
        key = f"zip[{i}]"
        z = _table(z, key, ctx)
        meta = {k: z[k] for k in ("labels", "name") if k in z}
        knobs = _flatten({k: val for k, val in z.items() if k not in meta})
        if len(knobs) < 2:
            raise ctx.error(key, "a zipped axis needs at least two knobs")
        cols = []
        for path, vals in knobs:
            _no_seed(path, f"{key}.{path}", ctx)
            if path not in KNOBS:
                raise ctx.error(f"{key}.{path}", f"unknown knob {path!r}{suggest(path, KNOBS)}")
            if not isinstance(vals, list) or not vals:
                raise ctx.error(f"{key}.{path}", "must be a non-empty array")
            if len(vals) > MAX_AXIS_VALUES:
                raise ctx.error(f"{key}.{path}", f"more than {MAX_AXIS_VALUES} values")
            cols.append((path, [_check_knob(path, x, f"{key}.{path}", ctx) for x in vals]))
        n = len(cols[0][1])
        for path, vals in cols:
            if len(vals) != n:
                raise ctx.error(f"{key}.{path}", f"has {len(vals)} values but {cols[0][0]} has {n}: zipped knobs "
                                "must have the same length")
        rows = [tuple(c[1][j] for c in cols) for j in range(n)]
        default_labels = ["/".join(_fmt(x) for x in r) for r in rows]
        labels = _labels(meta.get("labels"), n, f"{key}.labels", ctx, default_labels)
        name = _str(meta.get("name", "+".join(_short(p) for p, _ in cols)), f"{key}.name", ctx)
        out.append(Axis(name=name, paths=tuple(p for p, _ in cols), values=tuple(rows), labels=labels,
                        bare=_bare(labels)))
    return out


def _trajectory(v: Any, ctx: _Ctx) -> list[Step]:
    if not isinstance(v, list):
        raise ctx.error("trajectory", "must be an array of tables ([[trajectory]])")
    out = []
    labels: set[str] = set()
    for i, s in enumerate(v):
        key = f"trajectory[{i}]"
        s = _table(s, key, ctx)
        unknown = set(s) - {"label", "set"}
        if unknown:
            raise ctx.error(f"{key}.{sorted(unknown)[0]}", "unknown step key; valid: label, set")
        label = _str(s.get("label"), f"{key}.label", ctx, required=True)
        if label in labels:
            raise ctx.error(f"{key}.label", f"duplicate step label {label!r}")
        labels.add(label)
        out.append(Step(label=label, set=_knob_table(s.get("set", {}), f"{key}.set", ctx)))
    return out


def _include(v: Any, ctx: _Ctx) -> list[dict[str, Any]]:
    if not isinstance(v, list):
        raise ctx.error("include", "must be an array of tables ([[include]])")
    out = []
    for i, s in enumerate(v):
        key = f"include[{i}]"
        s = dict(_table(s, key, ctx))
        label = s.pop("label", None)
        if "seed" in s and "seeds" in s:
            raise ctx.error(f"{key}.seeds", "give seed or seeds, not both")
        seeds = _seeds(s.pop("seeds"), f"{key}.seeds", ctx) if "seeds" in s else None
        if "seed" in s:
            if isinstance(s["seed"], list):
                raise ctx.error(f"{key}.seed", "must be one integer (several: seeds = [...])")
            seeds = _seeds(s.pop("seed"), f"{key}.seed", ctx)
        cell = _knob_table(s, key, ctx)
        if label is not None:
            cell["__label__"] = _str(label, f"{key}.label", ctx)
        if seeds is not None:
            cell["__seeds__"] = seeds  # this cell's own seeds, instead of the grid's or the profile's
        out.append(cell)
    return out


def _exclude(v: Any, ctx: _Ctx, axes: list[Axis], where: str = "exclude") -> list[dict[str, tuple[Any, ...]]]:
    if not isinstance(v, list):
        raise ctx.error(where, f"must be an array of tables ([[{where}]])")
    out = []
    for i, s in enumerate(v):
        key = f"{where}[{i}]"
        s = _table(s, key, ctx)
        if not s:
            raise ctx.error(key, "an empty pattern would exclude every cell")
        pat: dict[str, tuple[Any, ...]] = {}
        for path, val in _flatten(s):
            _no_seed(path, f"{key}.{path}", ctx)
            vals = val if isinstance(val, list) else [val]
            axis = next((a for a in axes if path in a.paths), None)
            if axis is not None and len(axis.paths) == 1:  # match axis labels (the paper's values)
                for x in vals:
                    if _fmt(x) not in axis.labels:
                        raise ctx.error(f"{key}.{path}", f"{x!r} is not a label of axis {axis.name!r}; labels: "
                                        + ", ".join(axis.labels))
                pat[path] = tuple(vals)
            else:
                pat[path] = tuple(_check_knob(path, x, f"{key}.{path}", ctx) for x in vals)
        out.append(pat)
    return out


def _check_overwrites(base: dict[str, Any], axes: list[Axis], trajectory: tuple[Step, ...],
                      include: tuple[dict[str, Any], ...], exclude: tuple[dict[str, tuple[Any, ...]], ...],
                      profiles: dict[str, Profile], ctx: _Ctx) -> None:
    """Refuse what the expansion would silently drop (see `expand`: cell = base + profile, then the axes, then
    the cumulative trajectory steps; an included cell = base + profile + its own knobs):

    * a base or profile knob that an axis varies, or that the first trajectory step sets (every step keeps it),
      unless an [[include]] cell that does not set the knob itself reads it;
    * a trajectory step that sets a knob an axis varies (the axis value would be lost from that step on);
    * an exclude value that no cell can have (a pattern that can never match).
    """
    on_axis = {p: a for a in axes for p in a.paths}
    first = trajectory[0] if trajectory else None

    def dropped(path: str) -> str | None:
        if any(path not in inc for inc in include):
            return None  # an included cell reads it
        if path in on_axis:
            return f"varied by axis {on_axis[path].name!r}, which sets it in every cell"
        if first is not None and path in first.set:
            return f"set by the first trajectory step ({first.label!r}), which every step keeps"
        return None

    for path in base:
        why = dropped(path)
        if why:
            raise ctx.error(f"base.{path}", f"{why}, so this value is never used; remove it")
    for pname, prof in profiles.items():
        for path in prof.overrides:
            why = dropped(path)
            if why:
                hint = (f"; to change the axis in this profile, re-value it: profiles.{pname}.axes."
                        f"{on_axis[path].name} = [...]") if path in on_axis else ""
                raise ctx.error(f"profiles.{pname}.{path}", f"{why}, so this override is never used{hint}")
    for i, step in enumerate(trajectory):
        for path in step.set:
            if path in on_axis:
                raise ctx.error(f"trajectory[{i}].set.{path}", f"varied by axis {on_axis[path].name!r}: the step "
                                "would overwrite the axis value from here on; vary it on the axis or in the steps")
    patterns = [(f"exclude[{i}]", pat) for i, pat in enumerate(exclude)]
    patterns += [(f"profiles.{p.name}.exclude[{i}]", pat) for p in profiles.values() for i, pat in enumerate(p.exclude)]
    for where, pat in patterns:
        for path, vals in pat.items():
            axis = on_axis.get(path)
            if axis is not None and len(axis.paths) == 1:
                continue  # matched by axis label, checked when parsed
            possible = {repr(plain(KNOBS[path].default)), *(repr(v) for k, v in base.items() if k == path)}
            possible |= {repr(p.overrides[path]) for p in profiles.values() if path in p.overrides}
            possible |= {repr(s.set[path]) for s in trajectory if path in s.set}
            if axis is not None:
                j = axis.paths.index(path)
                rows = [axis.values, *(p.axes[axis.name] for p in profiles.values() if axis.name in p.axes)]
                possible |= {repr(r[j]) for vals_ in rows for r in vals_}
            for x in vals:
                if repr(x) not in possible:
                    raise ctx.error(f"{where}.{path}", f"no cell of any profile has {path} = {x!r}, so this "
                                    "pattern never matches (an exclude does not apply to [[include]] cells)")


def _check_dead(g: dict[str, Any], base: dict[str, Any], axes: list[Axis], n_product: int,
                profiles: dict[str, Profile], default_profile: str | None, ctx: _Ctx) -> None:
    """Refuse a value that no plan uses: with a default profile every plan has a profile, so a base knob that every
    profile overrides, the values of an axis that every profile re-values, and grid.seeds when every profile has
    its own seeds are never read. (Every value is still checked against its knob's range when it is read, whichever
    profile is planned.) A grid without profiles, or without a default profile, plans its base values as they are.
    """
    if not profiles or default_profile is None:
        return
    why = (f"every profile ({', '.join(profiles)}) replaces it and every plan has a profile (default_profile = "
           f"{default_profile!r}), so this value is never used")
    for j, a in enumerate(axes):
        if all(a.name in p.axes for p in profiles.values()):
            key = f"axes.{a.paths[0]}" if j < n_product else f"zip[{j - n_product}].{a.paths[0]}"
            raise ctx.error(key, f"{why.replace('replaces it', f're-values axis {a.name!r}')}: give the axis one "
                            f"profile's values here and drop that profile's axes.{a.name}")
    for path in base:
        if all(path in p.overrides for p in profiles.values()):
            raise ctx.error(f"base.{path}", f"{why}; remove it here (or let one profile keep it)")
    if "seeds" in g and all(p.seeds for p in profiles.values()):
        raise ctx.error("grid.seeds", f"{why.replace('replaces it', 'sets its own seeds')}; remove it here")


def _profiles(v: Any, axes: list[Axis], ctx: _Ctx) -> dict[str, Profile]:
    t = _table(v, "profiles", ctx)
    out = {}
    by_name = {a.name: a for a in axes}
    by_path = {a.paths[0]: a for a in axes if len(a.paths) == 1}
    for pname, body in t.items():
        key = f"profiles.{pname}"
        body = dict(_table(body, key, ctx))
        extra = {k: body.pop(k) for k in list(body) if k in _PROFILE_EXTRA}
        overrides = _knob_table(body, key, ctx)
        prof_axes: dict[str, tuple[Any, ...]] = {}
        keep: dict[str, tuple[str, ...]] = {}
        for aname, vals in _flatten(_table(extra.get("axes", {}), f"{key}.axes", ctx)):
            akey = f"{key}.axes.{aname}"
            axis = by_name.get(aname) or by_path.get(aname)
            if axis is None:
                raise ctx.error(akey, f"no axis {aname!r}{suggest(aname, list(by_name) + list(by_path))}")
            if isinstance(vals, dict):  # {values = [...], labels = [...]}: this profile keeps only those labels
                kept, vals = _kept_labels(vals, axis, akey, ctx)
                keep[axis.name] = kept
            elif not isinstance(vals, list) or len(vals) != len(axis.values):
                raise ctx.error(akey, f"must be an array of {len(axis.values)} values (one per label of the axis, "
                                "so reports still match the paper's columns), or {values = [...], labels = [...]} "
                                "for a subset of its labels")
            if len(axis.paths) == 1:
                rows = tuple((_check_knob(axis.paths[0], x, akey, ctx),) for x in vals)
            else:
                rows_l = []
                for x in vals:
                    if not isinstance(x, list) or len(x) != len(axis.paths):
                        raise ctx.error(akey, f"each value must be an array of {len(axis.paths)} ("
                                        + ", ".join(axis.paths) + ")")
                    rows_l.append(tuple(_check_knob(p, y, akey, ctx) for p, y in zip(axis.paths, x, strict=True)))
                rows = tuple(rows_l)
            if len({repr(r) for r in rows}) != len(rows):
                raise ctx.error(akey, "axis repeats a value")
            prof_axes[axis.name] = rows
        seeds = _seeds(extra["seeds"], f"{key}.seeds", ctx) if "seeds" in extra else None
        desc = _str(extra.get("description", ""), f"{key}.description", ctx)
        slurm = check_slurm_options(extra["slurm"], f"{key}.slurm", ctx.error) if "slurm" in extra else {}
        exclude = tuple(_exclude(extra["exclude"], ctx, axes, f"{key}.exclude")) if "exclude" in extra else ()
        out[pname] = Profile(name=pname, description=desc, overrides=overrides, axes=prof_axes, seeds=seeds,
                             keep=keep, slurm=slurm, exclude=exclude)
    return out


def _kept_labels(t: dict[str, Any], axis: Axis, key: str, ctx: _Ctx) -> tuple[tuple[str, ...], list[Any]]:
    """A profile's {values, labels} for an axis: labels a subset of the axis' labels, in its order, one value each."""
    for k in t:
        if k not in ("values", "labels"):
            raise ctx.error(f"{key}.{k}", "unknown key; valid: labels, values")
    labels, vals = t.get("labels"), t.get("values")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ctx.error(f"{key}.labels", "must be a non-empty array of the axis' labels (strings)")
    for x in labels:
        if x not in axis.labels:
            raise ctx.error(f"{key}.labels", f"no label {x!r} on axis {axis.name!r}; its labels: "
                            + ", ".join(axis.labels))
    if len(set(labels)) != len(labels) or labels != [x for x in axis.labels if x in labels]:
        raise ctx.error(f"{key}.labels", "must name each label once, in the axis' order: "
                        + ", ".join(axis.labels))
    if not isinstance(vals, list) or len(vals) != len(labels):
        raise ctx.error(f"{key}.values", f"must be an array of {len(labels)} values, one per label")
    return tuple(labels), vals


def _slurm(v: Any, axes: list[Axis], ctx: _Ctx) -> SlurmSpec:
    t = dict(_table(v, "slurm", ctx))
    by_t = t.pop("by", {})
    options = check_slurm_options(t, "slurm", ctx.error)
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for axis_name, per_label in _table(by_t, "slurm.by", ctx).items():
        axis = next((a for a in axes if a.name == axis_name), None)
        if axis is None:
            names = [a.name for a in axes]
            raise ctx.error(f"slurm.by.{axis_name}", f"no axis {axis_name!r}{suggest(axis_name, names)}; axes: "
                            + (", ".join(names) or "none"))
        for label, opts in _table(per_label, f"slurm.by.{axis_name}", ctx).items():
            if label not in axis.labels:
                raise ctx.error(f"slurm.by.{axis_name}.{label}", f"no label {label!r} on axis {axis_name!r}; its "
                                "labels: " + ", ".join(axis.labels))
            by.setdefault(axis_name, {})[label] = check_slurm_options(opts, f"slurm.by.{axis_name}.{label}",
                                                                      ctx.error)
    return SlurmSpec(options=options, by=by)


def _report(v: Any, axes: list[Axis], ctx: _Ctx) -> ReportSpec:
    t = _table(v, "report", ctx)
    for k in t:
        if k not in _REPORT_KEYS:
            raise ctx.error(f"report.{k}", f"unknown key{suggest(k, _REPORT_KEYS)}; valid: "
                            + ", ".join(sorted(_REPORT_KEYS)))
    dims = {a.name for a in axes} | {p for a in axes for p in a.paths} | {"step", "seed", "label"}
    rows = t.get("rows")
    cols = t.get("cols")
    for k, d in (("rows", rows), ("cols", cols)):
        if d is not None and (not isinstance(d, str) or d not in dims):
            raise ctx.error(f"report.{k}", f"must name an axis, 'step', 'seed' or 'label'; got {d!r}"
                            f"{suggest(str(d), dims)}")
    metrics = t.get("metrics", ["probe_top1"])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        raise ctx.error("report.metrics", "must be a non-empty array of metric names")
    for m in metrics:
        if m not in METRICS:
            raise ctx.error("report.metrics", f"unknown metric {m!r}{suggest(str(m), METRICS)}; valid: "
                            + ", ".join(METRICS))
    findings = t.get("findings", [])
    if not isinstance(findings, list):
        raise ctx.error("report.findings", "must be an array of finding names")
    for f in findings:
        if f not in FINDINGS:
            raise ctx.error("report.findings", f"unknown finding {f!r}{suggest(str(f), FINDINGS)}; valid: "
                            + ", ".join(FINDINGS))
    return ReportSpec(rows=rows, cols=cols, metrics=tuple(metrics), findings=tuple(findings))

