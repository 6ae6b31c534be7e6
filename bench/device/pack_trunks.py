"""Pack the shipped trunk weights small enough to travel to a lent GPU machine, and back.

The working tree that travels to the device machine is limited to 64 MiB, and the two
trunk files alone are 66 MiB. Byte planes (the 4 bytes of each float32 split into 4
streams) compress to 85% with zlib, which fits:

    python bench/device/pack_trunks.py pack     # weights/*_trunk.safetensors -> .dev/packed/
    python bench/device/pack_trunks.py unpack   # and back (on the device machine)

``unpack`` checks each file's sha256 against ``lpips_jax/_registry.py``.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys
import zlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMES = ("alex_trunk", "vgg_trunk")
PACKED = ROOT / ".dev" / "packed"
WEIGHTS = ROOT / "weights"


def pack() -> None:
    PACKED.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        raw = (WEIGHTS / f"{name}.safetensors").read_bytes()
        pad = (-len(raw)) % 4
        planes = np.frombuffer(raw + b"\0" * pad, np.uint8).reshape(-1, 4).T.copy()
        body = zlib.compress(planes.tobytes(), 6)
        (PACKED / f"{name}.z").write_bytes(len(raw).to_bytes(8, "little") + body)
        print(f"{name}: {len(raw)} -> {len(body) + 8} bytes")


def unpack() -> None:
    sys.path.insert(0, str(ROOT))
    from lpips_jax import _registry

    for name in NAMES:
        packed = (PACKED / f"{name}.z").read_bytes()
        size = int.from_bytes(packed[:8], "little")
        planes = np.frombuffer(zlib.decompress(packed[8:]), np.uint8).reshape(4, -1)
        raw = planes.T.tobytes()[:size]
        digest = hashlib.sha256(raw).hexdigest()
        want = _registry.SHIPPED[f"{name}.safetensors"]
        if digest != want:
            raise SystemExit(f"{name}: sha256 {digest}, expected {want}")
        (WEIGHTS / f"{name}.safetensors").write_bytes(raw)
        print(f"{name}: {size} bytes, sha256 {digest}")


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]]()
