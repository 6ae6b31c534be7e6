"""Train a small Flax NNX autoencoder with an L1 + LPIPS loss (optax Adam), on the CPU.

The NNX version of ``examples/autoencoder.py``: the same model, loss and flags, and its
data and training loop (``train``, imported from it).
The LPIPS term (AlexNet, v0.1) is ``lpips_jax.nnx.LPIPS``, an NNX module whose weights
are ``LPIPSWeights`` variables, not ``nnx.Param``: ``nnx.grad`` and
``nnx.Optimizer(..., wrt=nnx.Param)`` leave them frozen, and only the autoencoder
learns. Every ``log_every`` steps it prints L1 and LPIPS on a fixed held-out batch, and
the LPIPS term falls.

    python examples/autoencoder_nnx.py                 # 300 steps, about a minute on 2 cores
    python examples/autoencoder_nnx.py --steps 1000 --lpips-weight 1.0

Needs ``optax`` and ``scikit-image`` (``pip install -e ".[test]"`` in a checkout has both).
"""

from __future__ import annotations

import argparse
import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax
from autoencoder import train  # the linen example, beside this file
from flax import nnx

import lpips_jax
import lpips_jax.nnx

# nnx.Optimizer.update takes (model, grads) from flax 0.11 on, (grads) in flax 0.10.
UPDATE_TAKES_MODEL = "model" in inspect.signature(nnx.Optimizer.update).parameters


class AutoEncoder(nnx.Module):
    """32x32x3 -> 8x8x8 bottleneck (6x fewer numbers) -> 32x32x3 in [-1, 1]."""

    def __init__(self, *, width: int = 32, latent: int = 8, rngs: nnx.Rngs):
        w = width
        self.enc1 = nnx.Conv(3, w, (3, 3), strides=(2, 2), rngs=rngs)
        self.enc2 = nnx.Conv(w, 2 * w, (3, 3), strides=(2, 2), rngs=rngs)
        self.code = nnx.Conv(2 * w, latent, (1, 1), rngs=rngs)
        self.dec1 = nnx.ConvTranspose(latent, 2 * w, (3, 3), strides=(2, 2), rngs=rngs)
        self.dec2 = nnx.ConvTranspose(2 * w, w, (3, 3), strides=(2, 2), rngs=rngs)
        self.out = nnx.Conv(w, 3, (3, 3), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.enc2(nnx.relu(self.enc1(x))))
        h = nnx.relu(self.dec2(nnx.relu(self.dec1(self.code(h)))))
        return jnp.tanh(self.out(h))


def make_train_step(lpips_weight: float):
    def losses(model: AutoEncoder, lp: lpips_jax.nnx.LPIPS, batch):
        recon = model(batch)
        l1 = jnp.mean(jnp.abs(recon - batch))
        perceptual = jnp.mean(lp(recon, batch))
        return l1 + lpips_weight * perceptual, (l1, perceptual)

    @nnx.jit
    def train_step(model, optimizer, lp, batch):
        # The gradient is w.r.t. the model's nnx.Param only (argnums=0, nnx.grad's default).
        grads, (l1, perceptual) = nnx.grad(losses, has_aux=True)(model, lp, batch)
        if UPDATE_TAKES_MODEL:
            optimizer.update(model, grads)
        else:
            optimizer.update(grads)
        return l1, perceptual

    @nnx.jit
    def evaluate(model, lp, batch):
        return losses(model, lp, batch)[1]

    return train_step, evaluate


def nnx_setup(*, lpips_weight: float, learning_rate: float, seed: int) -> tuple:
    """The NNX autoencoder for ``autoencoder.train``: its state (the model, updated in place
    with the optimizer), a step ``(model, batch) -> model`` and the held-out losses."""
    lp = lpips_jax.nnx.LPIPS("alex")
    model = nnx.jit(lambda: AutoEncoder(rngs=nnx.Rngs(seed)))()  # one compile, not one per op
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)
    train_step, evaluate = make_train_step(lpips_weight)

    def step(model, batch):
        train_step(model, optimizer, lp, batch)
        return model

    return model, step, lambda model, batch: evaluate(model, lp, batch)


# main(steps=300, *, batch_size=16, ...): the linen example's loop and flags, this model.
main = functools.partial(train, nnx_setup)


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """``main``'s keyword arguments from ``--steps``, ``--batch-size``, ... (its defaults)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, p in inspect.signature(main).parameters.items():
        if name != "verbose":
            ap.add_argument("--" + name.replace("_", "-"), type=type(p.default), default=p.default)
    return vars(ap.parse_args(argv))


if __name__ == "__main__":
    main(**parse_args())
