"""How long `sweepdae plan` takes on hostile or huge grid files (issue 26, "small files, long waits").

    .venv/bin/python benchmarks/grid_planning.py [--only NAME ...] [--timeout 120] [--scale 1.0]

(To time another checkout's code with this script: PYTHONPATH=/path/to/that/checkout before the command.)

Each case runs in a fresh `sweepdae plan` process (the installed command, as a user meets it) with a wall-clock
timeout, and prints its wall time, peak memory (ru_maxrss of the child) and the exit status:
- `profile_800_dots`: a 1.6 KB grid whose failing key is in a quoted profile name of 800 dotted parts (the
  error-line lookup);
- `profile_450_dots`: the same with 450 parts (899 characters, under the key-length cap: it reaches the lookup);
- `dotted_key_40kb`: a 40 KB dotted key (tomllib's cost grows with the number of parts);
- `junk_50mb`: a 50 MB array of strings under an unknown key (no size cap: all of it is parsed first);
- `junk_1mib`: the same just under 1 MiB (the size cap): the most text a grid file may hand to tomllib;
- `big_int`: an integer of 5,000 digits (tomllib raises a ValueError of its own);
- `cells_20000`: a valid grid of 20,000 cells (the cap), planned with `--json`;
- `cells_20000_table`: the same, printed as `plan`'s table (Rich renders 20,000 rows);
- `expand (library)`: with `cells_20000`, `load_grid` + `expand` + every cell's keys in this process.
`--scale` shrinks the hostile inputs (0.25 = a quarter of the dots, bytes and parts) for a quick look.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD = '[grid]\nname = "bench"\n\n[base]\ndata.name = "digits"\ndata.image_size = 8\ntokenizer.patch_size = 4\n'


def cases(scale: float) -> dict[str, bytes]:
    dots = max(2, int(800 * scale))
    parts = max(2, int(20_000 * scale))  # "a." x 20,000 = 40 KB
    junk = max(1, int(50 * scale))
    cells = (HEAD + "\n[axes]\ntrain.epochs = " + str(list(range(1, 201)))
             + '\nprobe.epochs = { name = "probe_epochs", values = ' + str(list(range(1, 101))) + " }\n").encode()
    return {
        "profile_800_dots": (HEAD + '\n[profiles."' + ".".join(["p"] * dots) + '"]\ntrain.epochz = 2\n').encode(),
        "profile_450_dots": (HEAD + '\n[profiles."' + ".".join(["p"] * max(2, int(450 * scale)))
                             + '"]\ntrain.epochz = 2\n').encode(),
        "dotted_key_40kb": (HEAD + ".".join(["a"] * parts) + " = 1\n").encode(),
        "junk_50mb": (HEAD + "junk = [" + '"xxxxxxxxxx", ' * (junk * 2**20 // 14) + "]\n").encode(),
        "junk_1mib": (HEAD + "junk = [" + '"xxxxxxxxxx", ' * ((2**20 - 200) // 14) + "]\n").encode(),
        "big_int": (HEAD + "train.epochs = " + "9" * 5000 + "\n").encode(),
        "cells_20000": cells,
        "cells_20000_table": cells,
    }


def run(name: str, text: bytes, tmp: Path, timeout: float) -> None:
    path = tmp / f"{name}.toml"
    path.write_bytes(text)
    sweepdae = Path(sys.executable).with_name("sweepdae")
    cmd = [str(sweepdae), "plan", str(path), "--store", f"journal:{tmp / (name + '.journal')}"]
    cmd += [] if name.endswith("_table") else ["--json"]
    # a wrapper process per case, so that each case's peak memory is its own (ru_maxrss of its only child)
    # (the wrapper enforces the timeout, so that a case past it is killed, not orphaned)
    wrap = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[2:], capture_output=True, text=True, "
            "timeout=float(sys.argv[1])); "
            "sys.stdout.write(f'{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n{p.returncode}\\n'); "
            "sys.stdout.write(p.stderr)")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", wrap, str(timeout), *cmd], capture_output=True, text=True,
                           cwd=tmp)
        peak_kb, status, *err = p.stdout.strip().splitlines()
        peak_s = f"{int(peak_kb) / 1024:.0f} MB"
    except ValueError:  # the wrapper printed nothing: its child ran past the timeout
        status, err, peak_s = f"timeout>{timeout:g}s", [], "?"
    wall = time.perf_counter() - t0
    first = (err[0][:110] + f" (+{len(err) - 1} lines)" * (len(err) > 1)) if err else ""
    print(f"{name:18s} {len(text) / 1024:10.1f} KB  {wall:7.2f} s  peak {peak_s:>15s}  exit {status:>6s}  {first}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    all_cases = cases(args.scale)
    names = args.only or list(all_cases)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, scale {args.scale:g}")
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            run(name, all_cases[name], Path(d), args.timeout)
        if "cells_20000" in names:  # the library alone, in this process: parse, expand, every cell's two keys
            from sweepdae.grid import expand, load_grid

            path = Path(d) / "cells_20000.toml"
            t0 = time.perf_counter()
            cells = expand(load_grid(path)).cells
            keys = {(c.key, c.train_key) for c in cells}
            print(f"{'expand (library)':18s} {path.stat().st_size / 1024:10.1f} KB  {time.perf_counter() - t0:7.2f} s"
                  f"  {len(cells)} cells, {len(keys)} keys", flush=True)


if __name__ == "__main__":
    main()
