"""Training LPIPS heads on BAPPS 2AFC judgments, as the official ``lpips`` 0.1.4 trainer.

Facts of the official trainer (``lpips/trainer.py``, ``lpips/lpips.py``, ``train.py``)
reproduced here:

- Modes: ``lin`` trains the heads on the frozen ImageNet trunk; ``tune`` trains the trunk
  too; ``scratch`` starts the trunk from random weights and trains it. Heads start random
  (PyTorch's default conv init, ``U(-1/sqrt(C), 1/sqrt(C))``), since the official trainer
  builds ``LPIPS(pretrained=False)``.
- The heads see ``Dropout(0.5)`` of the squared feature differences while training.
- A ranking network (``Dist2LogitLayer``) maps ``(d0, d1, d0 - d1, d0 / (d1 + .1),
  d1 / (d0 + .1))`` through 1x1 convs 32, 32, 1 with ``LeakyReLU(0.2)`` and a sigmoid to
  the predicted judgment; the loss is binary cross-entropy against ``judge`` (the
  fraction of raters preferring ``p1``).
- Adam, lr ``1e-4``, ``beta1 = 0.5`` (``beta2 = 0.999``, ``eps = 1e-8``), batch 50,
  shuffled. The learning rate is constant for ``epochs + 1`` epochs and then decays by
  ``lr / epochs_decay`` after each later epoch (the official ``update_learning_rate`` runs
  at the end of every epoch ``> nepoch``): with 5 + 5 epochs the rates are
  ``1, 1, 1, 1, 1, 1, .8, .6, .4, .2`` times ``lr``.
- After every step the 1x1 head weights are clamped to ``>= 0``.
- The training accuracy is the official ``compute_accuracy``:
  ``(d1 < d0) * judge + (d1 >= d0) * (1 - judge)``.

The distances are the metric's own (:func:`lpips_jax.features` and
:func:`lpips_jax.distance_from_features`), so training and evaluation cannot drift apart.
The train step is one jitted function per configuration (a partial last batch is padded
and masked out, so shapes are static and the step is traced once). Checkpoints are
orbax-checkpoint's, one folder per finished epoch, written whole or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

import lpips_jax
from lpips_jax import LPIPSParams, _checks, _weights
from lpips_jax._outputs import progress_bar
from lpips_jax._sharding import pad_rows
from lpips_jax.bapps._examples import Examples, to_unit_official

MODES = ("lin", "tune", "scratch")
HEADS_INIT = ("random", "pretrained")
EXPORT_HINT = "python -m convert.export_heads {out} heads.pth"


# ----------------------------------------------------------------------------- modules


def _torch_uniform(fan_in: int):
    """PyTorch's default conv/linear init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dist2Logit(nn.Module):
    """The official ``Dist2LogitLayer``: ``(d0, d1)`` -> logit of the predicted judgment.

    Layers ``model_0``, ``model_2``, ``model_4`` are the official ``model.0/2/4`` 1x1 convs
    (as dense layers over the 5 inputs). Returns ``(N,)`` logits; the official sigmoid is
    folded into the loss.
    """

    hidden: int = 32
    eps: float = 0.1

    @nn.compact
    def __call__(self, d0: jax.Array, d1: jax.Array) -> jax.Array:
        eps = self.eps
        x = jnp.stack([d0, d1, d0 - d1, d0 / (d1 + eps), d1 / (d0 + eps)], axis=-1)
        for i, (fan_in, width) in enumerate(((5, self.hidden), (self.hidden, self.hidden))):
            x = nn.Dense(
                width, kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in),
                name=f"model_{2 * i}",
            )(x)  # fmt: skip
            x = nn.leaky_relu(x, 0.2)
        x = nn.Dense(
            1, kernel_init=_torch_uniform(self.hidden), bias_init=_torch_uniform(self.hidden),
            name="model_4",
        )(x)  # fmt: skip
        return x[..., 0]


def init_heads(key: jax.Array, net: str) -> dict:
    """Random heads as the official trainer: ``U(-1/sqrt(C), 1/sqrt(C))``, ``(1, 1, C, 1)``."""
    channels = lpips_jax.tap_channels(net)
    keys = jax.random.split(key, len(channels))
    return {f"lin{k}": {"kernel": _torch_uniform(c)(keys[k], (1, 1, c, 1))} for k, c in enumerate(channels)}


def init_trunk(key: jax.Array, net: str) -> dict:
    """A random trunk initialised as torchvision initialises the untrained model.

    AlexNet: PyTorch's defaults (``U(+-1/sqrt(fan_in))`` for weights and biases); VGG16:
    Kaiming normal (fan-out, ReLU), zero biases; SqueezeNet 1.1: Kaiming uniform, zero biases.
    """
    shapes = _weights.expected_shapes(net, "trunk")
    flat = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        k = jax.random.fold_in(key, i)
        if name.endswith("/kernel"):
            kh, kw, cin, cout = shape
            fan_in, fan_out = kh * kw * cin, kh * kw * cout
            if net == "alex":
                v = _torch_uniform(fan_in)(k, shape)
            elif net == "vgg":
                v = jax.random.normal(k, shape) * math.sqrt(2.0 / fan_out)
            else:
                b = math.sqrt(6.0 / fan_in)
                v = jax.random.uniform(k, shape, jnp.float32, -b, b)
        else:
            if net == "alex":
                kshape = shapes[name[: -len("bias")] + "kernel"]
                v = _torch_uniform(kshape[0] * kshape[1] * kshape[2])(k, shape)
            else:
                v = jnp.zeros(shape, jnp.float32)
        flat[name.split("/", 1)[1]] = v
    return _weights.unflatten(flat)


def head_dropout(fa: tuple, fb: tuple, key: jax.Array, rate: float) -> tuple[tuple, tuple]:
    """The heads' training dropout, on two sets of normalised taps ``(N, h, w, C)``.

    The official ``Dropout`` acts on each head's input, the squared difference ``(a - b)^2``:
    each element kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``. Here
    both taps are scaled by ``s``, 0 or ``1 / sqrt(1 - rate)``, and ``(s a - s b)^2 =
    s^2 (a - b)^2``: the same dropout, and the metric's own distance
    (:func:`lpips_jax.distance_from_features`) of the result. One draw for all taps (one
    RNG op in the compiled step).
    """
    if rate == 0:
        return fa, fb
    sizes = [a[0].size for a in fa]
    keep = jax.random.bernoulli(key, 1.0 - rate, (fa[0].shape[0], sum(sizes)))
    offsets = np.cumsum([0, *sizes])
    scale = [
        jnp.where(keep[:, lo:hi].reshape(a.shape), 1.0 / math.sqrt(1.0 - rate), 0.0)
        for a, lo, hi in zip(fa, offsets[:-1], offsets[1:], strict=True)
    ]
    return (
        tuple(a * s for a, s in zip(fa, scale, strict=True)),
        tuple(b * s for b, s in zip(fb, scale, strict=True)),
    )


def export_heads_torch_format(params: LPIPSParams, *, trunk: bool = False) -> dict[str, np.ndarray]:
    """Heads (and optionally the trunk) under the official ``lpips.LPIPS`` state-dict names.

    ``lin{k}.model.1.weight``: ``(1, C, 1, 1)`` float32; with ``trunk=True`` also
    ``net.slice{s}.{i}[.sub].{weight,bias}`` (OIHW), which ``lpips.LPIPS(model_path=...)``
    loads too. Plain numpy arrays: ``python -m convert.export_heads`` writes them for PyTorch.
    """
    if not isinstance(params, LPIPSParams) or not params.lpips or params.heads is None:
        raise ValueError("export_heads_torch_format needs LPIPSParams with heads (lpips=True)")
    out = {}
    for k in range(len(lpips_jax.tap_channels(params.net))):
        w = np.asarray(params.heads[f"lin{k}"]["kernel"], np.float32)
        out[f"lin{k}.model.1.weight"] = np.ascontiguousarray(w.transpose(3, 2, 0, 1))
    if trunk:
        bounds = _SLICES[params.net]
        for name, leaf in _weights.flatten(params.trunk).items():
            first, *rest = name.split("/")
            idx = int(first.split("_")[1])
            s = next(j + 1 for j, (lo, hi) in enumerate(bounds) if lo <= idx < hi)
            a = np.asarray(leaf, np.float32)
            kind = "weight" if rest[-1] == "kernel" else "bias"
            if kind == "weight":
                a = a.transpose(3, 2, 0, 1)
            key = ".".join(["net", f"slice{s}", str(idx), *rest[:-1], kind])
            out[key] = np.ascontiguousarray(a)
    return out


# The official lpips slices of torchvision's `features` (pretrained_networks.py).
_SLICES = {
    "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
    "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
    "squeeze": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)),
}


# ----------------------------------------------------------------------------- config / state


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a training run (and must match to resume one)."""

    net: str = "alex"
    version: str = "0.1"
    mode: str = "lin"
    heads_init: str = "random"
    epochs: int = 5
    epochs_decay: int = 5
    batch_size: int = 50
    lr: float = 1e-4
    beta1: float = 0.5
    dropout: float = 0.5
    seed: int = 0
    num_examples: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.num_examples // self.batch_size)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay


def lr_factor(epoch: Any, epochs: int, epochs_decay: int) -> Any:
    """The official learning-rate factor in (0-based) ``epoch``: 1 up to ``epochs``, then linear."""
    if epochs_decay <= 0:
        return jnp.ones_like(jnp.asarray(epoch, jnp.float32))
    e = jnp.asarray(epoch, jnp.float32)
    return jnp.where(e > epochs, 1.0 - (e - epochs) / epochs_decay, 1.0)


def _optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    steps = cfg.steps_per_epoch

    def schedule(count):
        return cfg.lr * lr_factor(count // steps, cfg.epochs, cfg.epochs_decay)

    return optax.adam(schedule, b1=cfg.beta1, b2=0.999, eps=1e-8)


@struct.dataclass
class TrainState:
    """What the jitted step carries: trainable params, the frozen trunk, Adam, step, RNG."""

    trainable: Any
    frozen_trunk: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """``params``: trained :class:`LPIPSParams`; ``rank``: the Dist2Logit params; ``history``:
    one dict per finished epoch (``epoch``, ``loss``, ``acc``, ``lr``); ``checkpoint``: the
    folder of the last checkpoint written or resumed from, if any."""

    params: LPIPSParams
    rank: Any
    history: tuple
    checkpoint: Path | None = None


def _lpips_params(cfg: TrainConfig, trunk: Any, heads: Any) -> LPIPSParams:
    return LPIPSParams(trunk=trunk, heads=heads, net=cfg.net, version=cfg.version, lpips=True)


def init_state(cfg: TrainConfig) -> TrainState:
    """The initial state: random heads and ranking net, pretrained (or random) trunk."""
    key = jax.random.PRNGKey(cfg.seed)
    k_heads, k_rank, k_trunk, k_run = jax.random.split(key, 4)
    if cfg.heads_init == "random":
        heads = init_heads(k_heads, cfg.net)
    else:
        heads = lpips_jax.load(cfg.net, cfg.version).heads
    rank = Dist2Logit().init(k_rank, jnp.zeros((1,)), jnp.zeros((1,)))["params"]
    if cfg.mode == "scratch":
        trunk = init_trunk(k_trunk, cfg.net)
    else:
        trunk = lpips_jax.load(cfg.net, lpips=False).trunk
    trainable = {"heads": heads, "rank": rank}
    frozen = trunk
    if cfg.mode != "lin":
        trainable["trunk"], frozen = trunk, None
    opt_state = _optimizer(cfg).init(trainable)
    return TrainState(
        trainable=trainable,
        frozen_trunk=frozen,
        opt_state=opt_state,
        step=jnp.zeros((), jnp.int32),
        key=k_run,
    )


@functools.lru_cache(maxsize=16)
def _train_step(cfg: TrainConfig):
    """The jitted train step for ``cfg`` (cached: one compilation per configuration)."""
    opt = _optimizer(cfg)
    rank_net = Dist2Logit()

    def taps(trunk, images):
        p = LPIPSParams(trunk=trunk, heads=None, net=cfg.net, version=cfg.version, lpips=False)
        f = lpips_jax.features(p, images)
        n = images.shape[0] // 3
        return tuple(tuple(t[i * n : (i + 1) * n] for t in f) for i in range(3))

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        images = to_unit_official(jnp.concatenate([batch["ref"], batch["p0"], batch["p1"]]))
        judge = batch["judge"].astype(jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        key = jax.random.fold_in(state.key, state.step)
        k0, k1 = jax.random.split(key)
        frozen = None if state.frozen_trunk is None else taps(state.frozen_trunk, images)

        def loss_fn(tr):
            fr, f0, f1 = frozen if frozen is not None else taps(tr["trunk"], images)
            params = _lpips_params(cfg, tr.get("trunk", state.frozen_trunk), tr["heads"])
            d0 = lpips_jax.distance_from_features(params, *head_dropout(fr, f0, k0, cfg.dropout))
            d1 = lpips_jax.distance_from_features(params, *head_dropout(fr, f1, k1, cfg.dropout))
            logit = rank_net.apply({"params": tr["rank"]}, d0, d1)
            bce = optax.sigmoid_binary_cross_entropy(logit, judge)
            return jnp.sum(bce * mask) / jnp.sum(mask), (d0, d1)

        (loss, (d0, d1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
        # optax mixes Python floats with int32 step counts: not valid under
        # jax_numpy_dtype_promotion="strict", which our users (and tests) may set.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = opt.update(grads, state.opt_state, state.trainable)
        tr = optax.apply_updates(state.trainable, updates)
        tr = {**tr, "heads": jax.tree_util.tree_map(lambda w: jnp.maximum(w, 0.0), tr["heads"])}
        d1_lt_d0 = (d1 < d0).astype(jnp.float32)
        acc = d1_lt_d0 * judge + (1.0 - d1_lt_d0) * (1.0 - judge)
        metrics = {
            "loss_sum": loss * jnp.sum(mask),
            "acc_sum": jnp.sum(acc * mask),
            "n": jnp.sum(mask),
        }
        new = state.replace(trainable=tr, opt_state=opt_state, step=state.step + 1)
        return new, metrics

    return jax.jit(step)


# ----------------------------------------------------------------------------- data


def _training_data(data: Any, data_dir: Any, subsets: Any) -> Examples:
    if isinstance(data, Mapping):
        return Examples.from_arrays("2afc", data)
    from lpips_jax import bapps
    from lpips_jax.bapps import _layout

    if data is not None:
        bapps.prepare(data, configs=("2afc",), data_dir=data_dir)
    prepared = bapps.prepared_splits("2afc", data_dir=data_dir)
    if subsets is None:
        names = [n for n in prepared if n.startswith("train_")]
        if not names:
            raise _layout.BappsDataError(
                f"no prepared BAPPS 2afc train subsets in data_dir={data_dir!r} "
                f"(prepared: {prepared}); pass the BAPPS folder as data to prepare it"
            )
    else:
        names = []
        for s in subsets:
            split, _, sub = s.partition("/") if "/" in s else ("train", "", s)
            _layout.check_subset("2afc", split, sub)
            names.append(_layout.split_name(split, sub))
    return Examples.from_splits("2afc", names, data_dir=data_dir)


# ----------------------------------------------------------------------------- checkpoints
# orbax-checkpoint's CheckpointManager: a folder `epoch_NNNN` per finished epoch, written
# under a temporary name and renamed when complete, so a run stopped mid-write leaves the
# checkpoints before it as they were (and the next manager clears the partial folder).


def _checkpoint_path(directory: str | os.PathLike, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:04d}"


def checkpoint_manager(directory: str | os.PathLike, *, keep: int = 2) -> Any:
    """An ``orbax.checkpoint.CheckpointManager`` of ``directory`` (steps: finished epochs)
    keeping the newest ``keep`` (all if ``keep < 1``); a context manager."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep >= 1 else None, step_prefix="epoch", step_format_fixed_length=4,
        create=True, cleanup_tmp_directories=True,
    )  # fmt: skip
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _saved(state: TrainState) -> dict:
    """What a checkpoint holds of ``state``: trainable params, optimizer state, step, RNG key."""
    return {"trainable": state.trainable, "opt_state": state.opt_state, "step": state.step, "key": state.key}


def save_checkpoint(manager: Any, epoch: int, state: TrainState, cfg: TrainConfig, history: list) -> None:
    """Everything needed to resume after ``epoch`` finished epochs (and the config and history)."""
    import orbax.checkpoint as ocp

    meta = {"config": dataclasses.asdict(cfg), "history": history}
    args = ocp.args.Composite(state=ocp.args.StandardSave(_saved(state)), meta=ocp.args.JsonSave(meta))
    manager.save(epoch, args=args)


def restore_checkpoint(
    manager: Any, epoch: int, cfg: TrainConfig, template: TrainState
) -> tuple[TrainState, list]:
    """``(state, history)`` after ``epoch`` finished epochs; the config must equal ``cfg``."""
    import orbax.checkpoint as ocp

    path = _checkpoint_path(manager.directory, epoch)
    meta = manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    theirs, want = meta["config"], dataclasses.asdict(cfg)
    diff = {k: (theirs.get(k), want[k]) for k in want if theirs.get(k) != want[k]}
    if diff:
        lines = "\n".join(f"  {k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"checkpoint {path} was written by a different training configuration:\n{lines}\n"
            "use the same options, another checkpoint directory, or resume=False"
        )
    target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _saved(template))
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    saved = jax.device_get(manager.restore(epoch, args=args)["state"])
    # As a fresh state's arrays: uncommitted to a device (a committed argument is another
    # signature of the jitted step: it would compile again).
    return template.replace(**jax.tree_util.tree_map(jnp.asarray, saved)), meta["history"]


# ----------------------------------------------------------------------------- train


def _check_options(net, version, mode, heads_init, epochs, epochs_decay, batch_size, dropout):
    _checks.check_net(net)
    _checks.check_version(version)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not known: expected one of {MODES}")
    if heads_init not in HEADS_INIT:
        raise ValueError(f"heads_init={heads_init!r} is not known: expected one of {HEADS_INIT}")
    for name, v, lo in (
        ("epochs", epochs, 0),
        ("epochs_decay", epochs_decay, 0),
        ("batch_size", batch_size, 1),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name}={v!r}: expected an int >= {lo}")
    if epochs + epochs_decay < 1:
        raise ValueError("epochs + epochs_decay must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: expected a probability in [0, 1)")


def train(
    *,
    data: Any = None,
    net: str = "alex",
    mode: str = "lin",
    version: str = "0.1",
    data_dir: str | os.PathLike | None = None,
    subsets: list[str] | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    epochs: int = 5,
    epochs_decay: int = 5,
    batch_size: int = 50,
    lr: float = 1e-4,
    beta1: float = 0.5,
    dropout: float = 0.5,
    seed: int = 0,
    heads_init: str = "random",
    stop_after: int | None = None,
    keep_checkpoints: int = 2,
    progress: bool | None = True,
) -> TrainResult:
    """Train LPIPS heads (``lin``), heads and trunk (``tune``) or all from scratch on 2AFC.

    Args:
      data: the BAPPS manual directory (prepared into ``data_dir`` first), ``None`` (use
        what ``data_dir`` holds), or a mapping of arrays ``ref, p0, p1``: ``(N, H, W, 3)``
        uint8 and ``judge``: ``(N,)`` fraction of raters preferring ``p1``.
      net, version: the trunk and the input scaling (``version``) of the trained model.
      mode: ``"lin"``, ``"tune"`` or ``"scratch"``.
      data_dir: tensorflow-datasets data directory.
      subsets: 2AFC subsets, ``"traditional"`` or ``"val/cnn"`` style (default: every
        prepared ``train_*`` split, i.e. the official ``train/{traditional,cnn,mix}``).
      out: write the trained params (trunk + heads) here; ``lpips_jax.load(path=out)``
        reads them, ``python -m convert.export_heads OUT heads.pth`` exports the heads.
      checkpoint_dir: write a checkpoint (orbax-checkpoint, a folder ``epoch_NNNN``:
        params, optimizer state, step, RNG key, history) after every epoch; with
        ``resume``, continue from the newest one there, else start over and replace them.
      epochs, epochs_decay, batch_size, lr, beta1: the official schedule (module docstring).
      dropout: dropout on the heads' inputs while training (official 0.5).
      seed: seeds initialisation, shuffling and dropout; a run is reproducible.
      heads_init: ``"random"`` (official) or ``"pretrained"`` (start from shipped heads).
      stop_after: stop after this many finished epochs (the schedule stays that of the
        full run), e.g. to resume later.
      keep_checkpoints: how many newest checkpoints to keep.
      progress: a progress bar on stderr with the running loss and 2AFC accuracy
        (``None``: when stderr is a terminal).

    Returns:
      :class:`TrainResult`.
    """
    _check_options(net, version, mode, heads_init, epochs, epochs_decay, batch_size, dropout)
    source = _training_data(data, data_dir, subsets)
    n = len(source)
    if n == 0:
        raise ValueError("no training triplets")
    cfg = TrainConfig(
        net=net, version=version, mode=mode, heads_init=heads_init, epochs=epochs,
        epochs_decay=epochs_decay, batch_size=batch_size, lr=float(lr), beta1=float(beta1),
        dropout=float(dropout), seed=int(seed), num_examples=n,
    )  # fmt: skip
    state = init_state(cfg)
    start, history, last_ckpt = 0, [], None
    step_fn = _train_step(cfg)
    end = cfg.total_epochs if stop_after is None else min(cfg.total_epochs, stop_after)
    steps = cfg.steps_per_epoch
    with contextlib.ExitStack() as stack:
        manager = None
        if checkpoint_dir is not None:
            manager = stack.enter_context(checkpoint_manager(checkpoint_dir, keep=keep_checkpoints))
            found = manager.latest_step()
            if found is not None and resume:
                state, history = restore_checkpoint(manager, found, cfg, state)
                start, last_ckpt = found, _checkpoint_path(checkpoint_dir, found)
            elif found is not None:
                for old in manager.all_steps():
                    manager.delete(old)
        total, desc = steps * cfg.total_epochs, f"train {mode} [{net}]"
        bar = stack.enter_context(
            progress_bar(progress, total, initial=steps * start, desc=desc, unit="step")
        )
        for epoch in range(start, end):
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            sums = []
            for s in range(steps):
                idx = perm[s * batch_size : (s + 1) * batch_size]
                batch = {k: pad_rows(v, batch_size) for k, v in source.get(idx).items()}
                batch["mask"] = (np.arange(batch_size) < len(idx)).astype(np.float32)
                state, m = step_fn(state, batch)
                sums.append(m)
                bar.update(1)
                if not bar.disable and (s % 10 == 9 or s == steps - 1):
                    bar.set_postfix(_summary(sums, epoch + 1))
            summary = _summary(sums, epoch + 1)
            summary["lr"] = float(cfg.lr * lr_factor(epoch, cfg.epochs, cfg.epochs_decay))
            history.append(summary)
            if manager is not None:
                save_checkpoint(manager, epoch + 1, state, cfg, history)
                last_ckpt = _checkpoint_path(checkpoint_dir, epoch + 1)
    trunk = state.trainable.get("trunk", state.frozen_trunk)
    params = _lpips_params(cfg, trunk, state.trainable["heads"])
    if out is not None:
        save_trained(params, out, cfg)
    return TrainResult(
        params=params, rank=state.trainable["rank"], history=tuple(history), checkpoint=last_ckpt
    )


def save_trained(params: LPIPSParams, path: str | os.PathLike, cfg: TrainConfig) -> None:
    """Trunk + heads as a file :func:`lpips_jax.load` reads (``path=``)."""
    flat = _weights.flatten(params.trunk, "trunk/")
    flat.update(_weights.flatten(params.heads, "heads/"))
    meta = {
        "format": _weights.FORMAT,
        "net": params.net,
        "version": params.version,
        "trained": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
    }
    _weights.write_flat(flat, meta, path)


def _summary(sums: list, epoch: int) -> dict:
    tot = jax.tree_util.tree_map(lambda *a: float(np.sum(a)), *sums)
    return {"epoch": epoch, "loss": tot["loss_sum"] / tot["n"], "acc": tot["acc_sum"] / tot["n"]}
