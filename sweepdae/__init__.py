"""sweepdae: declarative ablation sweeps of l-DAE (Chen, Liu, Xie, He, arXiv 2401.14404)."""

from sweepdae.errors import SweepdaeError

__version__ = "0.1.0"

__all__ = ["SweepdaeError", "__version__"]
