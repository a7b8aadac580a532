"""Files shipped with sweepdae: grids/ and templates/ (top-level folders of the repo, inside the installed package)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """`grids` or `templates`: sweepdae/<name> in an installed wheel, else the checkout's top-level <name>/."""
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in resource_dir("grids").glob("*.toml"))
