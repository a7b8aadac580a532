"""The names of what a cell measures and of what a report concludes: the one list the grid language (`[report]
metrics / findings`), the cell, the store and the reports share. Imports no torch (`sweepdae plan` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    title: str
    short: str
    higher_is_better: bool
    digits: int


# What a cell records (result.json "metrics") that a grid's [report] may show.
METRICS: dict[str, MetricInfo] = {
    "probe_top1": MetricInfo("linear probe top-1 (%)", "acc.", True, 1),
    "probe_top5": MetricInfo("linear probe top-5 (%)", "top-5", True, 1),
    "knn_top1": MetricInfo("kNN top-1 (%)", "kNN", True, 1),
    "fid": MetricInfo("FID", "FID", False, 1),
    "train_loss": MetricInfo("final training loss", "loss", False, 4),
    "train_seconds": MetricInfo("training time (s)", "train s", False, 0),
    "images_per_s": MetricInfo("training images per second", "img/s", True, 0),
    # probe.baselines (sweepdae/cell/baselines.py), under the cell's own probe protocol:
    # the recipe's network at random init: with adaLN-Zero (the default) its blocks are the identity, so this
    # probes a random linear patch embedding, mean-pooled over tokens
    "random_init_probe_top1": MetricInfo("probe top-1 at random init, as training starts (%)", "random init",
                                         True, 1),
    # the same network and draws with the adaLN-Zero gates not zeroed: random blocks that mix tokens (a little: the
    # gates come from the untrained conditioning and are small, see sweepdae/cell/baselines.py)
    "random_net_probe_top1": MetricInfo("probe top-1 of a random network, adaLN-Zero off (%)", "random net",
                                        True, 1),
    # the images in [-1, 1]; over 32 px a side, average-pooled to 32 x 32 per channel first
    "raw_pixel_probe_top1": MetricInfo("probe top-1 on raw pixels, pooled to <= 32 px (%)", "raw pixels", True, 1),
    # the regime gate's baseline (REPRODUCTION.md): one untrained per-token ReLU layer of the model's width on the
    # cell's tokens, with a random position code, mean-pooled (sweepdae/cell/random_features.py)
    "random_features_probe_top1": MetricInfo("probe top-1 of an untrained ReLU layer on the tokens (%)",
                                             "random features", True, 1),
    # probe_top1 - max(random_init_probe_top1, random_net_probe_top1): over the better random-init encoder
    "probe_gain": MetricInfo("gain over the better random-init encoder (pts)", "gain", True, 1),
    # a single-level model probed at the paper's t = 10 instead of its own t (probe_top1)
    "probe_top1_t10": MetricInfo("linear probe top-1 at t = 10 (%)", "acc. t=10", True, 1),
    # probe.pool2x2: the same probe on the tokens averaged per 2 x 2 spatial quadrant, [B, 4C] (the paper reads
    # only the mean-pooled tokens). Shown, never judged: no finding reads it (sweepdae/report/findings.py READOUTS)
    "probe_top1_pool2x2": MetricInfo("linear probe top-1 on 2 x 2-pooled tokens (%)", "acc. 2x2", True, 1),
}

# The checks a grid's [report] findings may ask for (each is a function in sweepdae.report.findings).
FINDINGS = ("optimal_latent_dim", "unimodal_in_d", "kl_unnecessary", "fid_vs_accuracy", "multi_level_helps",
            "image_prediction_ok", "bigger_longer_helps", "trajectory")


def metric_info(name: str) -> MetricInfo:
    return METRICS.get(name, MetricInfo(name, name, True, 2))
