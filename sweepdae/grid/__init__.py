"""The grid language: TOML -> validated Grid -> expanded Cells with stable keys."""

from sweepdae.grid.expand import Cell, Plan, expand, resolve_profile
from sweepdae.grid.schema import FINDINGS, METRICS, Axis, Grid, Profile, ReportSpec, Step, load_grid, parse_grid

__all__ = ["FINDINGS", "METRICS", "Axis", "Cell", "Grid", "Plan", "Profile", "ReportSpec", "Step", "expand",
           "load_grid", "parse_grid", "resolve_profile"]
