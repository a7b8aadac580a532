"""The test and install machinery itself: fuzz tests are deterministic by default, and constraints.txt is a lock
of exact versions that satisfies pyproject.toml and keeps the torch pair."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"


@pytest.fixture
def default_profile(request: pytest.FixtureRequest) -> None:
    """Skips when another hypothesis profile was asked for (SWEEPDAE_HYPOTHESIS or --hypothesis-profile)."""
    other = os.environ.get("SWEEPDAE_HYPOTHESIS", "ci") != "ci" or request.config.getoption("hypothesis_profile", None)
    if other:
        pytest.skip("another hypothesis profile was asked for")


@pytest.mark.usefixtures("default_profile")
def test_hypothesis_is_derandomized_without_an_example_database() -> None:
    assert settings.default.derandomize and settings.default.database is None
    assert not settings.get_profile("random").derandomize  # the opt-in: SWEEPDAE_HYPOTHESIS=random


@pytest.mark.usefixtures("default_profile")
def test_a_property_draws_the_same_examples_on_every_run() -> None:
    drawn: list[str] = []

    @settings(max_examples=30)
    @given(st.text())
    def record(s: str) -> None:
        drawn.append(s)

    record()
    first = list(drawn)
    drawn.clear()
    record()
    assert drawn == first and len(set(first)) > 5


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)", line.strip())
        assert m, f"constraints.txt: not an exact pin: {line!r}"
        pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_the_lock_pins_every_dependency_inside_its_range() -> None:
    pins = locked()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the pair .ci/setup installs
    assert "sweepdae" not in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["postgres"],
            *project["optional-dependencies"]["dev"]]
    env = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{text}: not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{text}: locked at {pins[name]}"


def test_setup_installs_from_the_lock() -> None:
    setup = (ROOT / ".ci" / "setup").read_text()
    installs = [line for line in setup.splitlines() if re.search(r"\$PIP install", line)]
    assert installs and all('"${LOCK[@]}"' in line for line in installs), installs
    assert "LOCK=(-c constraints.txt)" in setup
