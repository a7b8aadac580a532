"""The CPU-profile search (REPRODUCTION.md, "Choosing the CPU profile"): every candidate's numbers over seeds
100-102 and the one the pre-registered criterion picks.

    .venv/bin/python benchmarks/repro_search/summarize.py [--store journal:benchmarks/repro_search/search.journal]

Criterion (fixed before the search ran): among candidates whose mean train_seconds is at most 110 s, the highest
lower end of the 95% Student-t interval of probe_gain over the three seeds.
"""

from __future__ import annotations

import argparse
import math
import re

import pandas as pd

from sweepdae.report.findings import interval
from sweepdae.store import open_store

TIME_LIMIT_S = 110.0
SHOWN = ("probe_top1", "knn_top1", "random_init_probe_top1", "random_net_probe_top1", "raw_pixel_probe_top1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="journal:benchmarks/repro_search/search.journal")
    args = ap.parse_args()
    store = open_store(args.store, create=False)
    try:
        df = store.cells()
    finally:
        store.close()
    df = df[df["status"] == "done"].copy()
    df["config"] = [re.sub(r"\s*seed=\d+$", "", str(x)) for x in df["label"]]
    rows = []
    for config, g in df.groupby("config", sort=False):
        gain = [float(x) for x in g["metric.probe_gain"]]
        ci = interval(gain)
        row = {"config": config, "seeds": len(g), "probe_gain": sum(gain) / len(gain),
               "gain_lo": ci[0] if ci else math.nan, "gain_hi": ci[1] if ci else math.nan,
               "train_s": float(g["metric.train_seconds"].mean())}
        row.update({m: float(g[f"metric.{m}"].mean()) for m in SHOWN if f"metric.{m}" in g})
        rows.append(row)
    table = pd.DataFrame(rows)
    eligible = table[(table["train_s"] <= TIME_LIMIT_S) & (table["seeds"] >= 2)]
    chosen = eligible.sort_values("gain_lo", ascending=False).iloc[0]["config"] if len(eligible) else None
    table["chosen"] = table["config"] == chosen
    cols = list(table.columns)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for rec in table.to_dict("records"):
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in rec.values()) + " |")
    print(f"\nchosen by the criterion: {chosen}")


if __name__ == "__main__":
    main()
