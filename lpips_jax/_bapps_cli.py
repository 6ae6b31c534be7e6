"""``lpips-jax eval`` and ``lpips-jax train``: BAPPS scoring and head training.

``register(subparsers)`` adds both subcommands to the ``lpips-jax`` argparse parser; each
sets ``func(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lpips_jax._checks import NETS, VERSIONS

METRICS = ("lpips", "baseline", "l2", "ssim", "l2-rgb", "ssim-rgb")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` and ``train`` subcommands."""
    _add_eval(subparsers)
    _add_train(subparsers)


def _common(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--net", default="alex", choices=NETS, help="trunk (default: alex)")
    p.add_argument("--version", default="0.1", choices=VERSIONS, help="LPIPS version (default: 0.1)")
    p.add_argument("--batch-size", type=int, default=50, help="batch size (default: 50)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a metric on BAPPS (2AFC and JND), as the paper's table",
        description="Score LPIPS (or a baseline) on BAPPS: 2AFC agreement and JND mAP per "
        "subset, as the official test_dataset_model.py.",
    )
    _common(p)
    p.add_argument("--metric", default="lpips", choices=METRICS, help="default: lpips")
    p.add_argument("--weights", metavar="FILE", help="params file (e.g. from `train --out`)")
    p.add_argument(
        "--tasks", nargs="+", choices=["2afc", "jnd"],
        help="default: every task with data (JND only for --split val)",
    )  # fmt: skip
    p.add_argument("--split", default="val", choices=["val", "train"], help="default: val")
    p.add_argument("--subsets", nargs="+", help="subset names (default: all prepared)")
    p.add_argument("--json", metavar="OUT", help="write the scores as JSON")
    p.set_defaults(func=run_eval)


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train LPIPS heads (lin), tune the trunk (tune) or train from scratch on BAPPS",
        description="Train on BAPPS 2AFC as the official train.py: Adam lr 1e-4, beta1 0.5, "
        "epochs at constant lr then linear decay, batch 50, heads clamped >= 0.",
    )
    _common(p)
    p.add_argument("--mode", default="lin", choices=["lin", "tune", "scratch"])
    p.add_argument("--out", required=True, metavar="FILE", help="trained params (.safetensors)")
    p.add_argument(
        "--checkpoint-dir", metavar="DIR",
        help="checkpoints after every epoch (default: OUT with suffix .checkpoints)",
    )  # fmt: skip
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--epochs", type=int, default=5, help="epochs at constant lr (default: 5)")
    p.add_argument("--epochs-decay", type=int, default=5, help="decay epochs (default: 5)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heads-init", default="random", choices=["random", "pretrained"])
    p.add_argument(
        "--subsets", nargs="+",
        help="2AFC subsets, e.g. traditional cnn mix or val/cnn (default: all train ones)",
    )  # fmt: skip
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs (resume later)")
    p.set_defaults(func=run_train)


def _fail(cmd: str, e: BaseException) -> int:
    print(f"lpips-jax {cmd}: error: {e}", file=sys.stderr)
    return 1


def run_eval(args: argparse.Namespace) -> int:
    from lpips_jax._evaluate import evaluate, format_table
    from lpips_jax._weights import WeightsError, load
    from lpips_jax.bapps import BappsDataError

    try:
        metric = args.metric
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
            progress=not args.no_progress,
        )
    except (BappsDataError, WeightsError, ValueError, ImportError) as e:
        return _fail("eval", e)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from lpips_jax._train import EXPORT_HINT, train
    from lpips_jax.bapps import BappsDataError

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
            progress=not args.no_progress,
        )
    except (BappsDataError, ValueError, ImportError) as e:
        return _fail("train", e)
    for h in result.history:
        print(f"epoch {h['epoch']}: loss {h['loss']:.4f}  2AFC acc {h['acc']:.4f}  lr {h['lr']:.3g}")
    print(f"wrote {args.out} (lpips_jax.load(path=...)); checkpoints in {ckdir}")
    print("export the heads to the official PyTorch lpips format with:")
    print("  " + EXPORT_HINT.format(out=args.out) + (" --trunk" if args.mode != "lin" else ""))
    return 0
