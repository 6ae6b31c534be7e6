"""``lpips-jax eval`` and ``lpips-jax train``: BAPPS scoring and head training.

``register(subparsers, progress)`` adds both subcommands; each sets ``func(args) -> int``
(the exit code). The library code (:mod:`lpips_jax.bapps`: ``evaluate``, ``train``) and
tensorflow-datasets are imported only when a command runs.
``eval`` splits each batch over the local devices and, under ``jax.distributed``, each
subset over the processes; process 0 prints and writes. E-LPIPS (``--net elpips``) scores
example ``i`` of a subset with the key ``fold_in(key(--seed), i)``, whatever the batch
(:func:`lpips_jax.bapps.evaluate`'s ``key``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lpips_jax.cli._common import (
    EXIT_OK,
    InputError,
    UsageError,
    atomic_file,
    check_model_options,
    check_output,
    draws,
    draws_record,
    err,
    existing_folder,
    is_writer,
    load_params,
    model_options,
    nonnegative_int,
    parallel_options,
    positive_float,
    positive_int,
    probability_below_1,
)

METRICS = ("lpips", "baseline", "l2", "ssim", "l2-rgb", "ssim-rgb")


def register(subparsers: argparse._SubParsersAction, progress: argparse.ArgumentParser) -> None:
    """Add the ``eval`` and ``train`` subcommands; ``progress``: the progress options."""
    _add_eval(subparsers, progress)
    _add_train(subparsers, progress)


def _data_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--data", metavar="DIR",
        help="BAPPS: the official tarballs or extracted dataset/ folder (prepared into "
        "--tfds-dir on first use); omit to use what --tfds-dir already holds",
    )  # fmt: skip
    p.add_argument(
        "--tfds-dir", metavar="DIR",
        help="tensorflow-datasets data_dir for the prepared dataset (default: tfds' own, "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=50, help="batch size (default: 50)")
    return p


def _add_eval(subparsers, progress) -> None:
    model = model_options(net="alex", version="0.1", weights="params file (e.g. from `train --out`)")
    p = subparsers.add_parser(
        "eval",
        parents=[_data_options(), model, progress, parallel_options()],
        help="score a metric on BAPPS (2AFC and JND), as the paper's table",
        description="Score LPIPS (or a baseline) on BAPPS: 2AFC agreement and JND mAP per "
        "subset, as the official test_dataset_model.py. E-LPIPS (--net elpips): example i "
        "of a subset (0-based, in the dataset's order) is scored alone with the key "
        "jax.random.fold_in(jax.random.key(SEED), i), whatever the batch; a 2AFC triplet's "
        "two distances share that key (common random numbers), a JND pair has its own.",
    )
    p.add_argument("--metric", default="lpips", choices=METRICS, help="default: lpips")
    p.add_argument(
        "--tasks", nargs="+", choices=["2afc", "jnd"],
        help="default: every task with data (JND only for --split val)",
    )  # fmt: skip
    p.add_argument("--split", default="val", choices=["val", "train"], help="default: val")
    p.add_argument("--subsets", nargs="+", help="subset names (default: all prepared)")
    p.add_argument("--json", metavar="OUT", help="write the scores as JSON")
    p.set_defaults(func=run_eval)


def _add_train(subparsers, progress) -> None:
    model = model_options(net="alex", version="0.1", weights=None, random=False)
    p = subparsers.add_parser(
        "train",
        parents=[_data_options(), model, progress],
        help="train LPIPS heads (lin), tune the trunk (tune) or train from scratch on BAPPS",
        description="Train on BAPPS 2AFC as the official train.py: Adam lr 1e-4, beta1 0.5, "
        "epochs at constant lr then linear decay, batch 50, heads clamped >= 0.",
    )
    p.add_argument("--mode", default="lin", choices=["lin", "tune", "scratch"])
    p.add_argument("--out", required=True, metavar="FILE", help="trained params (.safetensors)")
    p.add_argument(
        "--checkpoint-dir", metavar="DIR",
        help="checkpoints after every epoch (default: OUT with suffix .checkpoints)",
    )  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--epochs", type=nonnegative_int, default=5, help="epochs at constant lr (default: 5)")
    p.add_argument("--epochs-decay", type=nonnegative_int, default=5, help="decay epochs (default: 5)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (default: 1e-4)")
    p.add_argument("--beta1", type=probability_below_1, default=0.5, help="Adam beta1 (default: 0.5)")
    p.add_argument(
        "--dropout", type=probability_below_1, default=0.5, help="dropout on the heads' inputs (default: 0.5)"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of init, shuffling, dropout")
    p.add_argument("--heads-init", default="random", choices=["random", "pretrained"])
    p.add_argument(
        "--subsets", nargs="+",
        help="2AFC subsets, e.g. traditional cnn mix or val/cnn (default: all train ones)",
    )  # fmt: skip
    p.add_argument("--stop-after", type=positive_int, metavar="N", help="stop after N epochs (resume later)")
    p.set_defaults(func=run_train)


def _failed(e: BaseException) -> InputError | UsageError:
    """The library's error as the CLI's: a missing extra or bad weights are usage errors (2);
    missing or unprepared data and a failing run are input errors (1)."""
    from lpips_jax._weights import WeightsError
    from lpips_jax.bapps import BappsDataError

    usage = (ImportError, WeightsError, FileNotFoundError)
    kind = UsageError if isinstance(e, usage) and not isinstance(e, BappsDataError) else InputError
    return kind(str(e))


def _check_data(args: argparse.Namespace) -> None:
    if args.data is not None:
        existing_folder(args.data)


def run_eval(args: argparse.Namespace) -> int:
    from lpips_jax._weights import WeightsError, load
    from lpips_jax.bapps import BappsDataError, evaluate
    from lpips_jax.bapps._evaluate import format_table

    _check_data(args)
    if is_writer():
        check_output(args.json, "--json")
    check_model_options(args)
    if args.net == "elpips" and args.metric != "lpips":
        raise UsageError(
            f"--metric {args.metric}: --net elpips scores E-LPIPS, with --metric lpips (the default)"
        )
    metric = load_params(args) if args.net == "elpips" else args.metric
    try:
        if args.weights:
            metric = load(path=args.weights, lpips=args.metric != "baseline")
        result = evaluate(
            metric,
            data=args.data,
            data_dir=args.tfds_dir,
            tasks=None if args.tasks is None else tuple(args.tasks),
            split=args.split,
            subsets=args.subsets,
            batch_size=args.batch_size,
            net=args.net,
            version=args.version,
            variant=args.variant,
            progress=args.progress if is_writer() else False,
            devices=args.local.count,
            **draws(args, metric),
        )
    except (BappsDataError, WeightsError, FileNotFoundError, ValueError, ImportError) as e:
        raise _failed(e) from e
    result.update(draws_record(args, metric))
    print(format_table(result))
    if args.json and is_writer():
        with atomic_file(args.json, "w") as f:
            f.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        err(f"wrote {args.json}")
    return EXIT_OK


def run_train(args: argparse.Namespace) -> int:
    from lpips_jax.bapps import BappsDataError, train
    from lpips_jax.bapps._train import EXPORT_HINT

    if args.net in ("dists", "elpips") or args.variant != "vanilla":
        raise UsageError(
            f"train fits LPIPS heads on torchvision's trunks: --net {args.net} --variant {args.variant} "
            "is not trainable here (DISTS, E-LPIPS and ST-LPIPS ship their published weights)"
        )
    if args.epochs + args.epochs_decay < 1:
        raise UsageError(
            f"--epochs {args.epochs} --epochs-decay {args.epochs_decay}: expected at least one epoch in all"
        )
    _check_data(args)
    check_output(args.out, "--out")
    ckdir = args.checkpoint_dir or str(Path(args.out).with_suffix(".checkpoints"))
    try:
        result = train(
            data=args.data,
            net=args.net,
            mode=args.mode,
            version=args.version,
            data_dir=args.tfds_dir,
            subsets=args.subsets,
            out=args.out,
            checkpoint_dir=ckdir,
            resume=not args.no_resume,
            epochs=args.epochs,
            epochs_decay=args.epochs_decay,
            batch_size=args.batch_size,
            lr=args.lr,
            beta1=args.beta1,
            dropout=args.dropout,
            seed=args.seed,
            heads_init=args.heads_init,
            stop_after=args.stop_after,
            progress=args.progress,
        )
    except (BappsDataError, ValueError, ImportError) as e:
        raise _failed(e) from e
    for h in result.history:
        print(f"epoch {h['epoch']}: loss {h['loss']:.4f}  2AFC acc {h['acc']:.4f}  lr {h['lr']:.3g}")
    print(f"wrote {args.out} (lpips_jax.load(path=...)); checkpoints in {ckdir}")
    print("export the heads to the official PyTorch lpips format with:")
    print("  " + EXPORT_HINT.format(out=args.out) + (" --trunk" if args.mode != "lin" else ""))
    return EXIT_OK
