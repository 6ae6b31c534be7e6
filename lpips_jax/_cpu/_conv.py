"""Convolution forms for XLA:CPU: each the same NHWC x HWIO conv (no bias) as
``lax.conv_general_dilated`` with symmetric zero padding ``p``, in another form.

- ``"xla"``: ``lax.conv_general_dilated`` itself.
- ``"eigen"`` (stride 1): XLA:CPU (jaxlib 0.10) hands a float32 conv to YNNPACK unless,
  among other exclusions, its output is larger than its input; on maps of 30x30 and more
  its Eigen conv is 1.5-3x faster. So: one extra output row, cropped; and, for the input
  derivative, a conv over an input with extra zero rows (:func:`_tangent_x`).
- ``"im2col"``: explicit patches and one matmul (small outputs).
- ``"s2d"``: a strided conv as a stride-1 conv over space-to-depth blocks (JAX's
  transpose of a strided conv w.r.t. its input is a conv over a dilated input, which
  XLA:CPU runs slowly).
- ``"rows"`` (stride 1): the ``kw`` views along W stacked on channels, then a ``kh x 1``
  conv. For the derivatives: JAX's transpose of it (the input gradient) is a conv with
  ``kw * ci`` output channels and an overlap-add along W, where its transpose of the plain
  conv, a conv down to the image's 3 channels, ran 3-4x slower (ST-LPIPS alex's 11x11 stem).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel, stride, p, form, precision):
    kh, kw, ci, co = kernel.shape
    if form == "xla":
        return lax.conv_general_dilated(
            x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DIMS, precision=precision
        )
    if form == "eigen":
        _check_stride_1(stride, form)
        oh = x.shape[1] + 2 * p - kh + 1
        extra = max(0, x.shape[1] - oh + 1)  # output one row taller than the input
        y = lax.conv_general_dilated(
            x, kernel, (1, 1), ((p, p + extra), (p, p)), dimension_numbers=_DIMS, precision=precision
        )
        return y[:, :oh]
    if form == "s2d":
        return _space_to_depth(x, kernel, stride, p, precision)
    if form == "rows":
        _check_stride_1(stride, form)
        xw = jnp.pad(x, ((0, 0), (0, 0), (p, p), (0, 0))) if p else x
        ow = xw.shape[2] - kw + 1
        wide = jnp.concatenate([lax.slice_in_dim(xw, b, b + ow, axis=2) for b in range(kw)], -1)
        # channels in (dx, c) order, like the kernel's (kw, ci) flattened
        return lax.conv_general_dilated(
            wide, kernel.reshape(kh, 1, kw * ci, co), (1, 1), ((p, p), (0, 0)), dimension_numbers=_DIMS,
            precision=precision,
        )  # fmt: skip
    if form != "im2col":
        raise ValueError(f"conv form {form!r}: expected 'xla', 'eigen', 'im2col', 's2d' or 'rows'")
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    n, h, w, _ = xp.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    if kh == 1 and kw == 1 and stride == 1:
        patches = xp
    elif kh * kw <= 9:
        # A sum of the window views, each zero-padded into its block of channels, (dy, dx, c)
        # order like the HWIO kernel reshaped: XLA fuses the sum (and its transpose) into
        # one loop, where a concatenation compiled to a kernel per view.
        k, zero = kh * kw, jnp.zeros((), xp.dtype)
        blocks = [
            lax.pad(v, zero, ((0, 0, 0),) * 3 + ((j * ci, (k - 1 - j) * ci, 0),))
            for j, v in enumerate(window_slices(xp, (kh, kw), stride, oh, ow))
        ]
        patches = functools.reduce(lax.add, blocks)
    else:
        # Larger kernels (alex's 5x5): two concatenations, kw views along W then kh along H
        # (a 25-term sum measured 1.3-1.7x slower).
        wide = jnp.concatenate(
            [lax.slice_in_dim(xp, dx, dx + stride * (ow - 1) + 1, stride, axis=2) for dx in range(kw)], -1
        )
        patches = jnp.concatenate(
            [lax.slice_in_dim(wide, dy, dy + stride * (oh - 1) + 1, stride, axis=1) for dy in range(kh)], -1
        )
    return lax.dot_general(
        patches, kernel.reshape(kh * kw * ci, co), (((3,), (0,)), ((), ())), precision=precision
    )


def window_slices(x, kernel, stride, oh, ow):
    """The strided views ``x[..., dy::stride, dx::stride, :]`` of ``(kh, kw)`` windows
    giving ``oh x ow`` outputs, in (dy, dx) order."""
    kh, kw = kernel
    lead = x.ndim - 3
    out = []
    for dy in range(kh):
        for dx in range(kw):
            start = [0] * lead + [dy, dx, 0]
            limit = [*x.shape[:-3], dy + stride * (oh - 1) + 1, dx + stride * (ow - 1) + 1, x.shape[-1]]
            out.append(lax.slice(x, start, limit, [1] * lead + [stride, stride, 1]))
    return out


def _space_to_depth(x, kernel, stride, p, precision):
    """The padded image cut into ``s x s`` blocks stacked on channels (``s*s*C``), the
    kernel zero-padded to a multiple of ``s`` likewise: a ``ceil(k/s)``-wide stride-1 conv."""
    n, h, w, c = x.shape
    kh, kw, _, co = kernel.shape
    oh, ow = (h + 2 * p - kh) // stride + 1, (w + 2 * p - kw) // stride + 1
    bh, bw = -(-kh // stride), -(-kw // stride)  # kernel size in blocks
    hb, wb = oh + bh - 1, ow + bw - 1  # input blocks needed
    xp = jnp.pad(x, ((0, 0), (p, max(hb * stride - h - p, 0)), (p, max(wb * stride - w - p, 0)), (0, 0)))
    last_h, last_w = stride * (hb - 1) + 1, stride * (wb - 1) + 1
    # Strided slices rather than a reshape of H and W, which has no sharding rule under
    # explicit sharding of the batch.
    xs = jnp.concatenate(
        [
            lax.slice(xp, (0, i, j, 0), (n, i + last_h, j + last_w, c), (1, stride, stride, 1))
            for i in range(stride)
            for j in range(stride)
        ],
        axis=-1,
    )  # (N, hb, wb, s*s*C), channels in (i, j, c) order like the kernel below
    kp = jnp.pad(kernel, ((0, bh * stride - kh), (0, bw * stride - kw), (0, 0), (0, 0)))
    ks = kp.reshape(bh, stride, bw, stride, c, co).transpose(0, 2, 1, 3, 4, 5)
    return conv(xs, ks.reshape(bh, bw, stride * stride * c, co), 1, 0, "xla", precision)


def _check_stride_1(stride, form):
    if stride != 1:
        raise ValueError(f"conv form {form!r} is for stride-1 convs: got stride {stride}")


def _tangent_x(dx, kernel, p, precision):
    """The stride-1 conv as a linear map of its input, written so that JAX's transpose
    (the input gradient) is a conv whose output is taller than its input (Eigen, not
    YNNPACK): ``dx`` gets extra zero rows at the bottom, the conv as many fewer rows of
    bottom padding; the same result."""
    extra = max(1, 2 * p - kernel.shape[0] + 2)
    dxp = jnp.pad(dx, ((0, 0), (0, extra), (0, 0), (0, 0)))
    return lax.conv_general_dilated(
        dxp, kernel, (1, 1), ((p, p - extra), (p, p)), dimension_numbers=_DIMS, precision=precision
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def split_conv(x, kernel, stride, p, form, jvp_form, precision):
    """The conv whose value is computed in ``form`` and its derivatives in ``jvp_form``:
    both are the same linear map, so the JVP (and JAX's transpose of it) is exact."""
    return conv(x, kernel, stride, p, form, precision)


@functools.partial(split_conv.defjvp, symbolic_zeros=True)
def _split_conv_jvp(stride, p, form, jvp_form, precision, primals, tangents):
    (x, kernel), (dx, dk) = primals, tangents
    y = conv(x, kernel, stride, p, form, precision)
    dy = jnp.zeros_like(y)
    if not isinstance(dx, SymbolicZero):
        if jvp_form == "eigen":
            _check_stride_1(stride, jvp_form)
            dy = _tangent_x(dx, kernel, p, precision)
        else:
            dy = conv(dx, kernel, stride, p, jvp_form, precision)
    if not isinstance(dk, SymbolicZero):
        # An "eigen" kernel gradient is JAX's own (YNNPACK): its Eigen form fell to a
        # generic loop, 30-140x slower.
        dy = dy + conv(x, dk, stride, p, "xla" if jvp_form == "eigen" else jvp_form, precision)
    return y, dy
