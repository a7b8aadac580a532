"""The console script's own entry point, run in the test's process: fast (no interpreter start, no imports), and the
same code a user's `sweepdae` runs, its last-resort error handler included."""

from __future__ import annotations

import contextlib
import io
import sys


def run_main(*args: str) -> tuple[int, str, str]:
    """`sweepdae ARGS` through `sweepdae.cli.main` in this process: exit status, stdout, stderr."""
    from sweepdae.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["sweepdae", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()
