"""sweepdae.models: the DiT-style denoiser (facebookresearch/DiT) and its name -> size registry."""

from sweepdae.models._dit import (
    CLASS_DROPOUT,
    MODEL_SIZES,
    Denoiser,
    ModelSpec,
    Pool,
    create_model,
    get_model_spec,
    model_names,
)
from sweepdae.models._layers import DiTBlock, FinalLayer, LabelEmbedder, TimestepEmbedder, get_2d_sincos_pos_embed

__all__ = [
    "CLASS_DROPOUT",
    "MODEL_SIZES",
    "DiTBlock",
    "Denoiser",
    "FinalLayer",
    "LabelEmbedder",
    "ModelSpec",
    "Pool",
    "TimestepEmbedder",
    "create_model",
    "get_2d_sincos_pos_embed",
    "get_model_spec",
    "model_names",
]
