"""docs/migrating.md: every snippet of ours runs as written and gives what the doc says.

The doc's ```python blocks whose first line is ``# lpips_jax`` are ours; each is run in a
fresh namespace holding the doc's names (``x``, ``y`` in [-1, 1], ``x01``, ``y01`` the same
images in [0, 1], ``x_nchw``) and checked by the function registered for the heading it
sits under. A dropped, added or re-titled block fails ``test_blocks_found``.

References, computed here another way: the official ``lpips`` 0.1.4 on the same inputs
(NCHW, its own heads, our trunk loaded into it as ``tests/conftest.py`` does) to 1e-5 as
in ``test_parity.py``; per-image loops over unbatched calls; and ``lpips_jax.distance`` on
the [-1, 1] images for the snippets that convert shapes or pass [0, 1] images. The [0, 1]
images are multiples of 1/256, so ``2 * x01 - 1`` is exactly ``x``: those comparisons are
entry-point comparisons (``_close``: ``assert_paths_agree``). AlexNet at 64x64, N = 3 (the batch size at
which ``l1_map + w * d`` broadcasts silently wrong).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _loss_helpers import assert_paths_agree, float64_truth
from conftest import REPO, official_model, to_nchw, trunk_state_dict

import lpips_jax
import lpips_jax.nnx

DOC = REPO / "docs" / "migrating.md"
N, H, W = 3, 64, 64
# Official parity, as test_parity.py: float32 sums in another order.
ATOL_OFFICIAL = 1e-5


def _blocks() -> list[tuple[str, str]]:
    """``(heading, code)`` of each ```python block of ours, in the doc's order; the code is
    preceded by blank lines so that a traceback gives the doc's line numbers."""
    out, heading, fence, start = [], None, None, 0
    for i, line in enumerate(DOC.read_text().splitlines()):
        if fence is not None:
            if line.startswith("```"):
                if fence and fence[0] == "# lpips_jax":
                    out.append((heading, "\n" * start + "\n".join(fence)))
                fence = None
            else:
                fence.append(line)
        elif line.startswith("```python"):
            fence, start = [], i + 1
        elif line.startswith("```"):
            fence = [None]  # another language: skipped
        elif m := re.match(r"#{2,3} (.+)", line):
            heading = m.group(1)
    return out


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    k = rng.integers(0, 256, (N, H, W, 3))
    ky = np.clip(k + rng.integers(-40, 41, k.shape), 0, 255)
    x01, y01 = (k / 256).astype(np.float32), (ky / 256).astype(np.float32)
    x, y = 2 * x01 - 1, 2 * y01 - 1
    return {"x": x, "y": y, "x01": x01, "y01": y01, "x_nchw": np.ascontiguousarray(x.transpose(0, 3, 1, 2))}


@pytest.fixture(scope="module")
def alex():
    return lpips_jax.load("alex")


@pytest.fixture(scope="module")
def official(alex):
    return official_model("alex", trunk_sd=trunk_state_dict(alex))


def _official(model, a, b, **kw):
    with torch.no_grad():
        return model(to_nchw(a), to_nchw(b), **kw)


def _run(code: str, images: dict) -> dict:
    ns = {"jax": jax, "jnp": jnp, "lpips_jax": lpips_jax, **{k: v.copy() for k, v in images.items()}}
    exec(compile(code, str(DOC), "exec"), ns)
    return ns


def _close(a, b, rtol=None, *, truth=None):
    """A snippet's ``a`` against ``b`` computed here. With ``rtol``: relative to ``b`` (a mean
    or a sum: float32 rounding of a few terms). Else two paths to one quantity
    (``assert_paths_agree``): against ``truth``, its float64 value, where they are
    different programs; without one, ``b`` is taken as exact and the bound is the float32
    rounding floor (the same program on equal inputs: bitwise equal here)."""
    if rtol is not None:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=0)
    else:
        assert_paths_agree(a, b, b if truth is None else truth)


# ---- one check per block, keyed by the heading it sits under ---------------------------


def check_everywhere(ns, im, alex, official):
    d, d4 = ns["d"], ns["d4"]
    assert d.shape == (N,) and d4.shape == (N, 1, 1, 1)
    np.testing.assert_array_equal(np.asarray(ns["x"]), im["x"])  # the NCHW -> NHWC line
    _close(d, lpips_jax.distance(alex, im["x"], im["y"]))
    ref = _official(official, im["x"], im["y"]).numpy()
    np.testing.assert_allclose(np.asarray(d4), ref, rtol=0, atol=ATOL_OFFICIAL)


def check_pixel_loss(ns, im, alex, official):
    loss_map, d, l1_map = (np.asarray(ns[k]) for k in ("loss_map", "d", "l1_map"))
    assert loss_map.shape == (N, H, W, 3)
    for i in range(N):  # each image's distance added to its own pixels, every channel
        _close(loss_map[i], l1_map[i] + ns["w"] * d[i])
    wrong = l1_map + ns["w"] * d  # the line the doc warns about: runs at N == 3, wrongly
    assert wrong.shape == loss_map.shape and not np.allclose(wrong, loss_map)
    # As the official (N, 1, 1, 1) broadcasts against an NCHW map.
    p = _official(official, im["x"], im["y"])
    ref = (torch.abs(to_nchw(im["x"]) - to_nchw(im["y"])) + ns["w"] * p).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(loss_map, ref, rtol=0, atol=ATOL_OFFICIAL)
    _close(ns["loss"], loss_map.mean(), rtol=1e-6)


def check_official(ns, im, alex, official):
    x, y = im["x"], im["y"]
    d, per, m = ns["d"], ns["per"], ns["m"]
    assert d.shape == (N, 1, 1, 1) and m.shape == (N, 1, H, W)
    ref, ref_per = _official(official, x, y, retPerLayer=True)
    np.testing.assert_allclose(np.asarray(d), ref.numpy(), rtol=0, atol=ATOL_OFFICIAL)
    assert len(per) == len(ref_per) == 5
    for ours, theirs in zip(per, ref_per):
        assert ours.shape == (N, 1, 1, 1)
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=0, atol=ATOL_OFFICIAL)
    official.spatial = True  # the official forward reads the flag at call time
    try:
        ref_map = _official(official, x, y).numpy()
    finally:
        official.spatial = False
    np.testing.assert_allclose(np.asarray(m), ref_map, rtol=0, atol=ATOL_OFFICIAL)
    _close(ns["d01"], lpips_jax.distance(alex, x, y))


def check_torchmetrics(ns, im, alex, official):
    d = lpips_jax.distance(alex, im["x"], im["y"])
    assert ns["score"].shape == () and ns["total"].shape == ()
    _close(ns["score"], np.mean(np.asarray(d)), rtol=1e-6)
    _close(ns["total"], ns["score"], rtol=1e-6)
    dists = lpips_jax.load("dists")
    assert ns["d_dists"].shape == ()
    _close(ns["d_dists"], np.mean(np.asarray(lpips_jax.distance(dists, im["x"], im["y"]))), rtol=1e-6)


def check_pyiqa(ns, im, alex, official):
    d = lpips_jax.distance(alex, im["x"], im["y"])
    assert ns["d"].shape == (N, 1) and ns["loss"].shape == () and ns["d_dists"].shape == (N, 1)
    _close(ns["d"][:, 0], d)
    _close(ns["loss"], np.mean(np.asarray(d)), rtol=1e-6)
    _close(ns["d_dists"][:, 0], lpips_jax.distance(lpips_jax.load("dists"), im["x"], im["y"]))


def check_jaxlpips(ns, im, alex, official):
    d = lpips_jax.distance(alex, im["x"], im["y"])
    assert ns["d"].shape == (N, 1, 1, 1) and ns["d_jit"].shape == (N,)
    _close(ns["d"][:, 0, 0, 0], d)
    _close(ns["d_jit"], d)


def check_lpips_j(ns, im, alex, official):
    assert ns["d"].shape == (N, 1, 1, 1)
    _close(ns["d"][:, 0, 0, 0], lpips_jax.distance(lpips_jax.load("vgg"), im["x"], im["y"]))


def check_lpips_jax_010(ns, im, alex, official):
    d = lpips_jax.distance(alex, im["x"], im["y"])
    assert ns["d"].shape == (N, 1, 1, 1) and ns["d_dev"].shape == (1, N)
    _close(ns["d"][:, 0, 0, 0], d)
    _close(ns["d_dev"][0], d)


def check_evaluator_010(ns, im, alex, official):
    # 0.1.0's own outputs are compared in test_evaluator.py; here the shapes and distance.
    x, y = im["x"], im["y"]
    truth = float64_truth(lpips_jax.distance, alex, x, y)
    assert ns["d"].shape == ns["d_jit"].shape == (N, 1, 1, 1) and ns["d_dev"].shape == (1, N, 1, 1, 1)
    for got in (ns["d"], ns["d_jit"], ns["d_dev"][0]):
        _close(got[:, 0, 0, 0], lpips_jax.distance(alex, x, y), truth=truth)


def check_linen_010(ns, im, alex, official):
    assert ns["d"].shape == (N, 1, 1, 1)
    _close(ns["d"][:, 0, 0, 0], lpips_jax.distance(alex, im["x"], im["y"]))


def check_lpips_nnx(ns, im, alex, official):
    from flax import nnx

    assert ns["d"].shape == (N, 1, 1, 1)
    _close(ns["d"][:, 0, 0, 0], lpips_jax.distance(lpips_jax.load("vgg"), im["x"], im["y"]))
    leaves = jax.tree.leaves(nnx.to_pure_dict(ns["weights"]))
    assert len(leaves) == len(jax.tree.leaves(lpips_jax.load("vgg"))) > 0


def check_batch_one(ns, im, alex, official):
    # The references: ref repeated N times, explicitly (another program, whose float32
    # rounding differs: both against the float64 value), and the official package, which
    # broadcasts too. The modules' broadcasting is tested in test_broadcast.py.
    x, y = im["x"], im["y"]
    ref = x[:1]
    refs = np.repeat(ref, N, axis=0)
    d, m, per, d_f = ns["d"], ns["m"], ns["per"], ns["d_f"]
    assert d.shape == (N,) and m.shape == (N, H, W) and d_f.shape == (N,)
    assert [p.shape for p in per] == [(N,)] * 5
    for got, fn, a, b in (
        (d, lpips_jax.distance, refs, y),
        (m, lpips_jax.distance_map, y, refs),
        (per, lpips_jax.layer_distances, refs, y),
        (d_f, lpips_jax.distance, y, refs),
    ):
        _close(got, fn(alex, a, b), truth=float64_truth(fn, alex, a, b))
    np.testing.assert_allclose(
        np.asarray(d)[:, None, None, None], _official(official, ref, y).numpy(), rtol=0, atol=ATOL_OFFICIAL
    )
    # "One unbatched (H, W, 3) image is not broadcast against a batch"
    with pytest.raises(ValueError, match="one of them a batch of 1"):
        lpips_jax.distance(alex, x[0], y)


CHECKS = {
    "What changes everywhere": check_everywhere,
    "`(N,)` next to a per-pixel loss": check_pixel_loss,
    "lpips 0.1.4 (the official package, PyTorch)": check_official,
    "torchmetrics 1.9.0": check_torchmetrics,
    "pyiqa 0.1.16": check_pyiqa,
    "jaxlpips 1.2.0": check_jaxlpips,
    "lpips-j 0.0.6": check_lpips_j,
    "lpips_jax 0.1.0 (the PyPI project `lpips_jax`)": check_evaluator_010,
    "The linen `LPIPS` of 0.1.0": check_linen_010,
    "Moving from the evaluator to `load` and `distance`": check_lpips_jax_010,
    "lpips-nnx 0.1.0": check_lpips_nnx,
    # Last: it exercises the batch-1 broadcasting of every entry point.
    "One reference against a batch": check_batch_one,
}


def test_blocks_found():
    headings = [h for h, _ in _blocks()]
    assert len(headings) == len(CHECKS) == 12, headings
    assert sorted(headings) == sorted(CHECKS), headings


@pytest.mark.parametrize("heading", list(CHECKS))
def test_block(heading, images, alex, official):
    (code,) = [c for h, c in _blocks() if h == heading]
    CHECKS[heading](_run(code, images), images, alex, official)
