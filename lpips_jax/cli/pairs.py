"""``dist`` and ``map``: one pair of images, its distance or its spatial distance map."""

from __future__ import annotations

import argparse
import contextlib
import json
import math

import numpy as np

from lpips_jax import _heatmap
from lpips_jax import io as lio
from lpips_jax.cli._common import (
    EXIT_OK,
    InputError,
    UsageError,
    atomic_file,
    check_output,
    draws,
    draws_record,
    err,
    fmt,
    fraction,
    load_params,
    positive_float,
    positive_int,
)
from lpips_jax.cli._reading import Notes, PairFailure, distance_jit, map_jit, read_pair


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``dist`` and ``map``; ``parents``: the model, reading and progress options."""
    p = sub.add_parser(
        "dist",
        parents=parents,
        help="distance of two images",
        description="Print the LPIPS distance of two images: the number alone on the last line of "
        "stdout. E-LPIPS (--net elpips) is lpips_jax.distance(params, a, b, "
        "key=jax.random.key(SEED), samples=N) on the pair (a batch of 1).",
    )
    p.add_argument("a", metavar="A", help="first image")
    p.add_argument("b", metavar="B", help="second image")
    p.add_argument(
        "--json", action="store_true",
        help='print {"a", "b", "net", "version", "variant", "distance"} (E-LPIPS: also "samples", '
        '"seed", "scale_levels")',
    )  # fmt: skip
    p.set_defaults(func=cmd_dist)

    p = sub.add_parser(
        "map",
        parents=parents,
        help="spatial distance map as a heat map PNG",
        description="Render the spatial distance map (distance_map) of two images as a colour "
        "heat map PNG: one map pixel per image pixel, with a colour bar on the right. Prints "
        "the map's mean on stdout. Not for DISTS or E-LPIPS (no spatial map).",
    )
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("-o", "--output", metavar="MAP.png", help="heat map PNG to write")
    p.add_argument("--npy", metavar="MAP.npy", help="also save the raw (H, W) float32 map")
    p.add_argument("--overlay", action="store_true", help="blend the colours over image A")
    p.add_argument(
        "--alpha", type=fraction, default=0.6, help="opacity of the colours with --overlay (default: 0.6)"
    )
    p.add_argument(
        "--vmax",
        type=positive_float,
        default=None,
        help="value at the top of the colour scale (default: the map's maximum); "
        "fix it to compare several maps",
    )
    p.add_argument(
        "--legend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the colour bar (default); --no-legend writes the map alone, HxW",
    )
    p.add_argument(
        "--zoom", type=positive_int, default=1, help="magnify the map N times, nearest neighbour (default: 1)"
    )
    p.set_defaults(func=cmd_map)


def _params_and_pair(args: argparse.Namespace) -> tuple:
    """``(params, x, y)``: the model (else exit 2) and images A and B (else exit 1); a
    dropped alpha channel is noted on stderr."""
    params = load_params(args)
    try:
        x, y, infos = read_pair(args.a, args.b, resize=args.resize, params=params)
    except (lio.ImageError, PairFailure) as e:
        raise InputError(str(e)) from e
    notes = Notes()
    notes.add(infos)
    notes.report()
    return params, x, y


def cmd_dist(args: argparse.Namespace) -> int:
    """``dist A B``: print the distance (the last line of stdout), or a JSON object."""
    params, x, y = _params_and_pair(args)
    d = float(np.asarray(distance_jit(params, x[None], y[None], **draws(args, params)))[0])
    if args.json:
        out = {"a": args.a, "b": args.b, "net": params.net, "version": params.version}
        out["variant"] = params.variant
        out.update(draws_record(args, params))
        out["distance"] = float(fmt(d)) if math.isfinite(d) else None
        print(json.dumps(out))
    else:
        print(fmt(d))
    return EXIT_OK


def cmd_map(args: argparse.Namespace) -> int:
    """``map A B -o MAP.png``: the spatial distance map as a colour heat map PNG."""
    if not args.output and not args.npy:
        raise UsageError("map: give -o MAP.png (heat map) and/or --npy MAP.npy (raw map)")
    if args.net == "dists":
        raise UsageError("map: DISTS defines no spatial map (its terms are statistics of whole images)")
    if args.net == "elpips":
        raise UsageError(
            "map: E-LPIPS defines no spatial map (its draws rescale, shift, flip and swap the "
            "images, so their maps do not align with the pixels); use dist"
        )
    check_output(args.output, "-o")
    check_output(args.npy, "--npy")
    params, x, y = _params_and_pair(args)
    dmap = np.asarray(map_jit(params, x[None], y[None]))[0]
    mean = fmt(float(dmap.mean()))
    # Everything is computed before the first file is written.
    png = _render(args, params, x, dmap, mean) if args.output else None
    # Nested atomic writes: a failure in the second removes the first one's temp file too.
    with contextlib.ExitStack() as files:
        if args.npy:
            np.save(files.enter_context(atomic_file(args.npy, "wb")), dmap.astype(np.float32))
        if png is not None:
            png[0].save(files.enter_context(atomic_file(args.output, "wb")), format="PNG", pnginfo=png[1])
    if args.npy:
        err(f"wrote {args.npy}: raw map, float32 {dmap.shape[0]}x{dmap.shape[1]} (H x W)")
    if png is not None:
        meta = png[2]
        scale = f"0 to {_heatmap.format_value(meta['vmax'])}"
        scale += "" if args.vmax is not None else " (the map's maximum)"
        err(
            f"wrote {args.output}: {meta['map_width']}x{meta['map_height']} heat map, "
            f"colour scale {scale}" + (", colour bar on the right" if args.legend else "")
        )
    print(mean)
    return EXIT_OK


def _render(args: argparse.Namespace, params, x: np.ndarray, dmap: np.ndarray, mean: str) -> tuple:
    """``(image, PNG text chunks, render facts)`` of the heat map, with the run in the chunks."""
    from PIL.PngImagePlugin import PngInfo

    img, meta = _heatmap.render(
        dmap,
        vmax=args.vmax,
        background=lio.to_unit(x) if args.overlay else None,
        alpha=args.alpha,
        legend=args.legend,
        zoom=args.zoom,
    )
    info = PngInfo()
    for k, v in {
        **meta,
        "net": params.net,
        "version": params.version,
        "variant": params.variant,
        "a": args.a,
        "b": args.b,
        "mean": mean,
        "colormap": json.dumps(_heatmap.CONTROL_COLOURS),
    }.items():
        info.add_text(f"lpips:{k}", str(v))
    return img, info, meta
