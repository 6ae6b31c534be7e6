"""PyTorch checkpoints -> lpips_jax safetensors params. The only torch importer of the project.

Small pure steps: read a state dict -> rename to ``/``-joined Flax names -> transpose
OIHW -> HWIO -> compare with the tree the code expects -> write atomically.
"""

from convert._convert import (
    ConversionError,
    convert_heads,
    convert_lpips_state_dict,
    convert_trunk,
    main,
    read_state_dict,
)

__all__ = [
    "ConversionError",
    "convert_heads",
    "convert_lpips_state_dict",
    "convert_trunk",
    "main",
    "read_state_dict",
]
