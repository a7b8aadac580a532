"""SLURM options of a grid's jobs (`[slurm]`, `[profiles.NAME.slurm]`), also read from the command line and the
user's config: the keys, their types and ranges, and the strings sbatch would misread."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from sweepdae.errors import printable
from sweepdae.grid._source import _tname
from sweepdae.recipe import suggest

__all__ = ["PER_GPU_KEYS", "SLURM_KEYS", "SLURM_STRINGS", "check_option_strings", "check_slurm_options",
           "layer_slurm_options"]

# `[slurm]`: the resources of the grid's jobs on a SLURM cluster (`sweepdae run --executor slurm`); not part of any
# recipe, so they never change a cell's key. key -> (type, what it means)
SLURM_KEYS: dict[str, tuple[type, str]] = {
    "partition": (str, "partition (sbatch --partition)"),
    "time": (int, "time limit of a job in minutes (sbatch --time)"),
    "account": (str, "account to charge (sbatch --account)"),
    "qos": (str, "quality of service (sbatch --qos)"),
    "constraint": (str, "node features (sbatch --constraint)"),
    "cpus": (int, "CPUs of a job (sbatch --cpus-per-task)"),
    "mem_gb": (float, "memory of a job in GB (sbatch --mem)"),
    "cpus_per_gpu": (int, "CPUs per GPU of a job: the job gets this x its GPUs (as sbatch --cpus-per-gpu)"),
    "mem_gb_per_gpu": (float, "memory per GPU of a job in GB: the job gets this x its GPUs (as sbatch --mem-per-gpu)"),
    "gpus": (int, "GPUs of a job (sbatch --gres=gpu:N; default --gpus-per-cell)"),
    "max_requeues": (int, "how many times a job that reaches its time limit is requeued"),
}


# per-GPU options and the job totals they give (gpus x per-GPU; a CPU-only job counts as one GPU): one table names
# one of the two; a later table's either one replaces an earlier table's other (`layer_slurm_options`)
PER_GPU_KEYS = {"cpus_per_gpu": "cpus", "mem_gb_per_gpu": "mem_gb"}


_V = TypeVar("_V")


def layer_slurm_options(low: Mapping[str, _V], high: Mapping[str, _V]) -> dict[str, _V]:
    """`high`'s SLURM options over `low`'s, a total and its per-GPU key replacing each other."""
    out = dict(low)
    for per, total in PER_GPU_KEYS.items():
        if per in high or total in high:
            out.pop(total if per in high else per, None)
    out.update(high)
    return out


# SLURM names (partitions, accounts, QOS) are letters, digits, '_', '.' and '-'; sbatch takes a comma-separated list of
# partitions. A constraint is features joined by its operators: & | , * [ ] ( ) ! and a count after ':'
# (sbatch(1), --constraint). None may start with '-' (sbatch would read an option) or hold a space. Checked
# wherever an option comes from: a grid's tables, the command line, the user's config.
_NAME = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
SLURM_STRINGS: dict[str, tuple[re.Pattern[str], str]] = {
    "partition": (re.compile(rf"{_NAME}(,{_NAME})*"), "partition names (letters, digits, _ . -), comma-separated"),
    "account": (re.compile(_NAME), "an account name (letters, digits, _ . -)"),
    "qos": (re.compile(_NAME), "a QOS name (letters, digits, _ . -)"),
    "constraint": (re.compile(r"[A-Za-z0-9_.\[(!][A-Za-z0-9_.&|,*:\[\]()!-]*"),
                   "node features (letters, digits, _ . -) joined by & | , * : [ ] ( ) !"),
}


def check_option_strings(opts: dict[str, Any], error: Any) -> None:
    """Refuse a SLURM option string sbatch would misread (a space, a leading '-'); `error(key, message)` makes the
    exception, naming where the option came from (a grid's table, the command line, the user's config)."""
    for key, value in opts.items():
        if key not in SLURM_STRINGS or not isinstance(value, str):
            continue
        pattern, what = SLURM_STRINGS[key]
        if len(value) > 256 or not pattern.fullmatch(value):
            raise error(key, f"expected {what}, not starting with '-'; got {printable(repr(value[:80]))}")


def check_slurm_options(t: Any, key: str, error: Any) -> dict[str, Any]:
    """Validated SLURM options of a table (`error(key, message)` makes the exception to raise)."""
    if not isinstance(t, dict):
        raise error(key, f"must be a table, got {_tname(t)}")
    out: dict[str, Any] = {}
    for k, v in t.items():
        if k not in SLURM_KEYS:
            raise error(f"{key}.{k}", f"unknown key{suggest(k, SLURM_KEYS)}; valid: {', '.join(sorted(SLURM_KEYS))}")
        typ, what = SLURM_KEYS[k]
        if typ is str:
            if not isinstance(v, str) or not v.strip() or any(c in v for c in "\n\r\0"):
                raise error(f"{key}.{k}", f"must be a non-empty one-line string: the {what}")
            check_option_strings({k: v}, lambda k, m: error(f"{key}.{k}", m))
        else:
            number = isinstance(v, int) or (typ is float and isinstance(v, float))
            if isinstance(v, bool) or not number or not v >= (0 if k in ("gpus", "max_requeues") else 1) \
                    or v > 10**7:
                least = 0 if k in ("gpus", "max_requeues") else 1
                kind = "an integer" if typ is int else "a number"
                raise error(f"{key}.{k}", f"must be {kind} >= {least}: the {what}; got {v!r}"[:200])
        out[k] = v
    for per, total in PER_GPU_KEYS.items():
        if per in out and total in out:
            raise error(f"{key}.{per}", f"give {total} (the job's) or {per} (x its GPUs), not both")
    return out
