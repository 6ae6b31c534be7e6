"""lpips_jax: perceptual image distances in JAX/Flax: LPIPS (Zhang et al., CVPR 2018),
numerically equal to ``lpips`` 0.1.4, ST-LPIPS (Ghildyal and Liu, ECCV 2022), DISTS (Ding
et al., TPAMI 2020) and E-LPIPS (Kettunen et al., 2019: random, its distance takes a key).

Images are NHWC ``(N, H, W, 3)`` or ``(H, W, 3)`` float arrays in ``[-1, 1]`` (``[0, 1]``
with ``normalize=True``). ``distance`` returns ``(N,)`` or ``()`` float32.

    params = lpips_jax.load("alex")  # or "vgg", "squeeze", "dists"; variant="shift_tolerant"
    d = lpips_jax.distance(params, x, y)
    d = lpips_jax.distance(lpips_jax.load("elpips"), x, y, key=jax.random.key(0), samples=8)

BAPPS scoring, evaluation and training live in :mod:`lpips_jax.bapps` (imported on demand).
"""

from lpips_jax._checks import NETS, VARIANTS, VERSIONS
from lpips_jax._dists import DISTSParams
from lpips_jax._elpips import ELPIPSParams
from lpips_jax._evaluator import LPIPSEvaluator
from lpips_jax._metric import (
    LPIPS,
    LPIPSParams,
    distance,
    distance_from_features,
    distance_map,
    features,
    layer_distances,
    normalize_channels,
    to_params,
)
from lpips_jax._nets import Trunk, min_size, tap_channels
from lpips_jax._weights import WeightsError, load, save
from lpips_jax.io import ImageError, ImageInfo, read_image

__version__ = "0.2.0"


def __getattr__(name: str):
    # lpips_jax.nnx imports flax.nnx, which plain use of the library does not need.
    if name == "nnx":
        import importlib

        return importlib.import_module("lpips_jax.nnx")
    raise AttributeError(f"module 'lpips_jax' has no attribute {name!r}")


__all__ = [
    "DISTSParams",
    "ELPIPSParams",
    "ImageError",
    "ImageInfo",
    "LPIPS",
    "LPIPSEvaluator",
    "LPIPSParams",
    "NETS",
    "VARIANTS",
    "VERSIONS",
    "Trunk",
    "WeightsError",
    "distance",
    "distance_from_features",
    "distance_map",
    "features",
    "layer_distances",
    "load",
    "min_size",
    "normalize_channels",
    "read_image",
    "save",
    "tap_channels",
    "to_params",
]
