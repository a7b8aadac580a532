"""Files shipped with sweepdae: grids/ and templates/ (top-level folders of the repo, inside the installed package)."""

from __future__ import annotations

from pathlib import Path


def resource_dir(name: str) -> Path:
    """`grids` or `templates`: the installed package data, or the checkout's top-level folder."""
    try:
        from importlib.resources import files

        p = Path(str(files(f"sweepdae.{name}")))
        if p.is_dir():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / name


def shipped_grids() -> list[str]:
    return sorted(p.stem for p in resource_dir("grids").glob("*.toml"))
