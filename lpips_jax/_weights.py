"""Loading and saving LPIPS params as safetensors, the only format read at run time.

File format: a safetensors file whose tensor names are ``/``-joined paths,
``trunk/features_{i}/kernel`` (HWIO), ``trunk/features_{i}/bias`` and, for SqueezeNet,
``trunk/features_{i}/{squeeze,expand1x1,expand3x3}/{kernel,bias}``; heads are
``heads/lin{k}/kernel`` of shape ``(1, 1, C_k, 1)``. String metadata records ``net``
and, when heads are present, ``version``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from lpips_jax import _checks, _dists, _elpips, _nets
from lpips_jax._dists import DISTSParams
from lpips_jax._metric import LPIPSParams
from lpips_jax._outputs import atomic_path
from lpips_jax._registry import SHIPPED

FORMAT = "lpips_jax/1"


class WeightsError(ValueError):
    """A weights file is missing, corrupt or does not match the expected params."""


def expected_shapes(net: str, part: str) -> dict[str, tuple[int, ...]]:
    """Flat ``name -> shape`` of the ``trunk``, ``heads`` or ``dists`` part for ``net``, a
    key of ``_nets.LAYERS`` (``"alex"``, ``"alex_st"``, ``"dists"``, ...)."""
    if net not in _nets.LAYERS:
        raise ValueError(f"net={net!r} is not known: expected one of {', '.join(map(repr, _nets.LAYERS))}")
    if part == "dists":
        return {f"dists/{k}": (sum(_dists.CHANNELS),) for k in ("alpha", "beta")}
    if part == "heads":
        return {f"heads/lin{k}/kernel": (1, 1, c, 1) for k, c in enumerate(_nets.tap_channels(net))}
    trunk = _nets.Trunk(net=net)
    shapes = jax.eval_shape(
        trunk.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    )["params"]
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        name = "/".join(str(p.key) for p in path)
        flat[f"trunk/{name}"] = tuple(leaf.shape)
    return flat


def compare(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Lines ``- name`` (missing), ``+ name`` (unexpected), ``! name: shape`` (mismatch)."""
    lines = [f" - {k} {expected[k]}" for k in sorted(expected.keys() - found.keys())]
    lines += [f" + {k} {found[k]}" for k in sorted(found.keys() - expected.keys())]
    lines += [
        f" ! {k}: got shape {found[k]}, expected {expected[k]}"
        for k in sorted(found.keys() & expected.keys())
        if tuple(found[k]) != tuple(expected[k])
    ]
    return lines


def unflatten(flat: dict[str, Any]) -> dict:
    """``{"a/b/c": v}`` to ``{"a": {"b": {"c": v}}}``."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + "/".join(str(p.key) for p in path)] = leaf
    return out


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_dir() -> Path:
    """Where the shipped files are: ``$LPIPS_JAX_WEIGHTS``, the installed package, or the repo."""
    env = os.environ.get("LPIPS_JAX_WEIGHTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here / "weights", here.parent / "weights"):
        if cand.is_dir() and any(cand.glob("*.safetensors")):
            return cand
    return here / "weights"


@functools.lru_cache(maxsize=16)
def _read(path: str, mtime: float, expect_sha: str | None) -> tuple[dict, dict]:
    if expect_sha is not None:
        got = sha256(path)
        if got != expect_sha:
            raise WeightsError(
                f"{path}: sha256 mismatch: file has {got}, expected {expect_sha} "
                "(the file is corrupt or was replaced; reinstall lpips_jax)"
            )
    try:
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = dict(f.metadata() or {})
        arrays = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
    return arrays, meta


def read_file(path: str | os.PathLike, expect_sha: str | None = None) -> tuple[dict, dict]:
    """Read a safetensors file: ``(flat name -> np.ndarray, metadata)``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {str(p)!r} does not exist")
    return _read(str(p.resolve()), p.stat().st_mtime, expect_sha)


# The ST-LPIPS weights (69 MB) ship in a wheel of their own, to keep each wheel under
# the public index's 100 MB: in a checkout they are in weights/ like the others.
OPTIONAL_PACKAGE = "lpips_jax_st_weights"
OPTIONAL = ("alex_shift_tolerant.safetensors", "vgg_shift_tolerant.safetensors")


def _shipped(name: str) -> tuple[dict, dict]:
    places = [weights_dir()]
    if name in OPTIONAL:
        import importlib.util

        spec = importlib.util.find_spec(OPTIONAL_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            places += [Path(p) for p in spec.submodule_search_locations]
    for place in places:
        if (place / name).is_file():
            return read_file(place / name, SHIPPED[name])
    hint = "broken install? set LPIPS_JAX_WEIGHTS to the folder holding it"
    if name in OPTIONAL:
        hint = (
            "the shift-tolerant weights are a package of their own: pip install "
            "lpips-jax-metrics-st-weights (from a checkout: pip install ./weights_st)"
        )
    raise WeightsError(f"shipped weights file {name!r} not found in {', '.join(map(str, places))} ({hint})")


def _check_part(flat: dict, net: str, part: str, where: str) -> dict:
    sub = {k: v for k, v in flat.items() if k.startswith(part + "/")}
    problems = compare({k: tuple(v.shape) for k, v in sub.items()}, expected_shapes(net, part))
    if problems:
        raise WeightsError(f"{where}: {part} params do not match net {net!r}:\n" + "\n".join(problems))
    for k, v in sub.items():
        if not np.issubdtype(v.dtype, np.floating):
            raise WeightsError(f"{where}: {k} has dtype {v.dtype}, expected a float dtype")
        if not np.all(np.isfinite(v)):
            raise WeightsError(f"{where}: {k} contains NaN or inf")
    if part == "heads":
        for k, v in sub.items():
            if np.any(v < 0):
                raise WeightsError(f"{where}: {k} has negative weights; LPIPS heads are >= 0")
    return unflatten({k.split("/", 1)[1]: v for k, v in sub.items()})


def _to_jax(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jnp.float32), tree)


def _squeeze_missing() -> WeightsError:
    return WeightsError(
        "no SqueezeNet-1.1 trunk is shipped (torchvision's ImageNet weights could not be "
        "obtained where this package was built). Convert torchvision's squeezenet1_1 "
        "weights yourself, from a checkout of the lpips_jax repository:\n"
        '  python -c "import torch, torchvision; torch.save(torchvision.models.'
        "squeezenet1_1(weights='IMAGENET1K_V1').state_dict(), 'squeezenet1_1.pth')\"\n"
        "  python -m convert --net squeeze --trunk squeezenet1_1.pth "
        "--heads <site-packages>/lpips/weights/v0.1/squeeze.pth --out squeeze.safetensors\n"
        "then lpips_jax.load(path='squeeze.safetensors')"
    )


def load(
    net: str | None = None,
    version: str | None = None,
    lpips: bool = True,
    *,
    variant: str = "vanilla",
    path: str | os.PathLike | None = None,
) -> LPIPSParams | DISTSParams:
    """Load the params of a metric.

    Args:
      net: ``"alex"`` (default), ``"vgg"`` or ``"squeeze"`` (LPIPS), ``"dists"``
        (DISTS) or ``"elpips"`` (E-LPIPS: random, its distance takes a key). With
        ``path``, taken from the file (and checked against it when given).
      version: LPIPS ``"0.1"`` (default) or ``"0.0"``: which head weights (and whether the
        scaling layer is applied).
      lpips: ``False`` for the baseline without heads (unweighted feature distance).
      variant: ``"vanilla"`` or ``"shift_tolerant"`` (ST-LPIPS, alex and vgg; version 0.1).
      path: a safetensors file written by ``convert/`` or by training.

    Returns:
      :class:`LPIPSParams` (:class:`DISTSParams` for ``"dists"``, ``ELPIPSParams`` for
      ``"elpips"``), float32 jax arrays.
    """
    if net == "elpips":
        if version is not None or lpips is not True or variant != "vanilla" or path is not None:
            raise ValueError(
                f"net='elpips' takes no version, lpips, variant or path (its weights ship): got "
                f"version={version!r}, lpips={lpips!r}, variant={variant!r}, path={path!r}"
            )
        return _elpips.load()
    if net == "dists":
        if version is not None or lpips is not True or variant != "vanilla":
            raise ValueError(
                f"net='dists' takes no version, lpips or variant: got version={version!r}, "
                f"lpips={lpips!r}, variant={variant!r}"
            )
        return _load_dists(path)
    if net is not None:
        _checks.check_net(net)
    if version is not None:
        _checks.check_version(version)
    _checks.check_lpips(lpips)
    _checks.check_variant(variant, net or "alex")
    if variant == "shift_tolerant" and version not in (None, "0.1"):
        raise ValueError(f"variant='shift_tolerant' has version '0.1' only (its scaling): got {version!r}")

    if path is not None:
        flat, meta = read_file(path)
        where = str(path)
        _check_format(meta, where)
        file_net = meta.get("net")
        if file_net == "dists":
            if net is not None:
                raise WeightsError(f"{where} holds DISTS params, but net={net!r} was asked for")
            return _dists_params(flat, where)
        if file_net not in _checks.NETS:
            raise WeightsError(f"{where}: metadata net={file_net!r} is not a known net")
        if net is not None and net != file_net:
            raise WeightsError(f"{where} holds net {file_net!r}, but net={net!r} was asked for")
        net = file_net
        file_variant = meta.get("variant", "vanilla")
        if variant != "vanilla" and variant != file_variant:
            raise WeightsError(f"{where} holds variant {file_variant!r}, but variant={variant!r} was asked")
        variant = _checks.check_variant(file_variant, net)
        stray = sorted(k for k in flat if not k.startswith(("trunk/", "heads/")))
        if stray:
            raise WeightsError(
                f"{where}: unexpected tensors, neither trunk/... nor heads/...:\n"
                + "\n".join(f" + {k}" for k in stray)
            )
        has_heads = any(k.startswith("heads/") for k in flat)
        if not any(k.startswith("trunk/") for k in flat):
            raise WeightsError(f"{where}: holds no trunk params (trunk/...)")
        tname = _nets.trunk_name(net, variant)
        trunk = _check_part(flat, tname, "trunk", where)
        heads = None
        file_version = meta.get("version")
        if lpips:
            if not has_heads:
                raise WeightsError(f"{where} holds a trunk only: pass lpips=False, or convert with --heads")
            heads = _check_part(flat, tname, "heads", where)
            if version is not None and file_version is not None and version != file_version:
                raise WeightsError(
                    f"{where} holds heads of version {file_version!r}, but version={version!r} was asked for"
                )
        version = version or file_version or "0.1"
        return LPIPSParams(
            trunk=_to_jax(trunk), heads=_to_jax(heads), net=net, version=version, lpips=lpips, variant=variant
        )

    net = net or "alex"
    version = version or "0.1"
    if variant == "shift_tolerant":
        name = f"{net}_shift_tolerant.safetensors"
        flat, _ = _shipped(name)
        tname = _nets.trunk_name(net, variant)
        trunk = _check_part(flat, tname, "trunk", name)
        heads = _check_part(flat, tname, "heads", name) if lpips else None
        return LPIPSParams(
            trunk=_to_jax(trunk), heads=_to_jax(heads), net=net, version=version, lpips=lpips, variant=variant
        )
    trunk_name = f"{net}_trunk.safetensors"
    if trunk_name not in SHIPPED:
        raise _squeeze_missing()
    flat, _ = _shipped(trunk_name)
    trunk = _check_part(flat, net, "trunk", trunk_name)
    heads = None
    if lpips:
        head_name = f"{net}_heads_v{version}.safetensors"
        hflat, _ = _shipped(head_name)
        heads = _check_part(hflat, net, "heads", head_name)
    return LPIPSParams(trunk=_to_jax(trunk), heads=_to_jax(heads), net=net, version=version, lpips=lpips)


def _check_format(meta: dict, where: str) -> None:
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{where}: metadata format={meta.get('format')!r}, expected {FORMAT!r}: "
            "not a file written by lpips_jax's convert/ or save()"
        )


DISTS_FILE = "dists_weights.safetensors"


def _load_dists(path) -> DISTSParams:
    """DISTS: the shipped VGG16 trunk and alpha/beta, or both from one file at ``path``."""
    if path is not None:
        flat, meta = read_file(path)
        _check_format(meta, str(path))
        if meta.get("net") != "dists":
            raise WeightsError(f"{path} holds net {meta.get('net')!r}, but net='dists' was asked for")
        return _dists_params(flat, str(path))
    trunk, _ = _shipped("vgg_trunk.safetensors")
    weights, _ = _shipped(DISTS_FILE)
    return _dists_params({**trunk, **weights}, f"vgg_trunk.safetensors + {DISTS_FILE}")


def _dists_params(flat: dict, where: str) -> DISTSParams:
    if not any(k.startswith("trunk/") for k in flat):  # alpha and beta only: the shipped trunk
        flat = {**_shipped("vgg_trunk.safetensors")[0], **flat}
    stray = sorted(k for k in flat if not k.startswith(("trunk/", "dists/")))
    if stray:
        raise WeightsError(f"{where}: unexpected tensors for DISTS:\n" + "\n".join(f" + {k}" for k in stray))
    trunk = _check_part(flat, "dists", "trunk", where)
    w = _check_part(flat, "dists", "dists", where)
    for k, v in w.items():
        if np.any(v < 0):
            raise WeightsError(f"{where}: dists/{k} has negative weights; DISTS' alpha and beta are >= 0")
    return DISTSParams(trunk=_to_jax(trunk), alpha=jnp.asarray(w["alpha"]), beta=jnp.asarray(w["beta"]))


def save(params: LPIPSParams, path: str | os.PathLike, *, trunk: bool = True) -> None:
    """Write ``params`` to a safetensors file that :func:`load` reads back.

    ``trunk=False`` writes the heads only (e.g. after training heads). The file is
    written to a temporary name first and renamed, so nothing half-written is left.
    """
    if getattr(params, "random", False):
        raise ValueError(
            f"save writes LPIPS and DISTS params; net={params.net!r} ships its weights "
            f"(lpips_jax.load({params.net!r})), and load reads no file of it"
        )
    flat = {}
    if trunk:
        flat.update(flatten(params.trunk, "trunk/"))
    meta = {"format": FORMAT, "net": params.net}
    if isinstance(params, DISTSParams):
        flat.update({"dists/alpha": params.alpha, "dists/beta": params.beta})
        write_flat(flat, meta, path)
        return
    if params.lpips and params.heads is not None:
        flat.update(flatten(params.heads, "heads/"))
    if params.lpips:
        meta["version"] = params.version
    if params.variant != "vanilla":
        meta["variant"] = params.variant
    write_flat(flat, meta, path)


def write_flat(flat: dict[str, Any], meta: dict[str, str], path: str | os.PathLike) -> None:
    """``flat`` as float32 tensors with string metadata ``meta``: a safetensors file at
    ``path``, written whole or not at all (:func:`lpips_jax._outputs.atomic_path`)."""
    arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in flat.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, tmp, metadata=meta)
