"""Colour heat maps of LPIPS distance maps with a colour bar, drawn with Pillow only.

The colour map is our own: piecewise-linear interpolation, in sRGB, between six control
colours chosen so that CIE L* lightness rises steadily from dark indigo (0) to light
yellow (the top of the scale), about 18 L* units per segment, so the map reads the same
in grayscale and for colour-blind viewers. No colour table is taken from another project.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (position in [0, 1], sRGB colour). L* = 4.3, 20.5, 40.2, 58.2, 73.5, 92.2.
CONTROL_COLOURS = (
    (0.0, (16, 10, 40)),
    (0.2, (59, 28, 120)),
    (0.4, (40, 94, 170)),
    (0.6, (20, 156, 150)),
    (0.8, (120, 200, 80)),
    (1.0, (250, 236, 90)),
)
_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)
# The legend needs this many pixels of height to stay legible; shorter maps get padding.
MIN_LEGEND_HEIGHT = 64


def colormap(v: np.ndarray) -> np.ndarray:
    """Map values ``v`` (any shape, clipped to ``[0, 1]``; NaN counts as 0) to sRGB.

    Returns ``v.shape + (3,)`` uint8.
    """
    v = np.nan_to_num(np.clip(np.asarray(v, np.float64), 0.0, 1.0), nan=0.0)
    xs = np.array([p for p, _ in CONTROL_COLOURS])
    cs = np.array([c for _, c in CONTROL_COLOURS], np.float64)
    out = np.stack([np.interp(v, xs, cs[:, k]) for k in range(3)], axis=-1)
    return np.round(out).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: bitmap font
        return ImageFont.load_default()


def format_value(v: float) -> str:
    """A tick label: three significant digits, no exponent for usual LPIPS values."""
    if v == 0:
        return "0"
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"


def ticks(vmax: float) -> tuple[float, ...]:
    """The values labelled on the colour bar, top first: ``vmax``, ``vmax / 2``, ``0``."""
    return (vmax, vmax / 2, 0.0)


def legend_layout(height: int, vmax: float) -> dict:
    """Geometry of the legend strip for a map of ``height`` pixels (see :func:`render`)."""
    fs = int(min(28, max(10, round(height / 14))))
    font = _font(fs)
    labels = [format_value(t) for t in ticks(vmax)]
    text_w = max(int(np.ceil(font.getlength(s))) for s in labels)
    margin = max(4, fs // 2)
    bar_w = max(8, fs)
    tick = max(3, fs // 3)
    canvas_h = max(height, MIN_LEGEND_HEIGHT)
    top = margin + fs // 2
    bottom = canvas_h - margin - fs // 2
    width = margin + bar_w + tick + 2 + text_w + margin
    return {
        "font": font,
        "font_size": fs,
        "labels": labels,
        "margin": margin,
        "bar_width": bar_w,
        "tick": tick,
        "top": top,
        "bottom": bottom,
        "width": width,
        "height": canvas_h,
    }


def render(
    dmap: np.ndarray,
    *,
    vmax: float | None = None,
    background: np.ndarray | None = None,
    alpha: float = 0.6,
    legend: bool = True,
    zoom: int = 1,
) -> tuple[Image.Image, dict]:
    """Render a distance map as an RGB heat map, with a colour bar on its right.

    Args:
      dmap: ``(H, W)`` distance map (values >= 0), e.g. from ``distance_map``.
      vmax: the value shown at the top of the scale; default ``dmap.max()``. The bottom
        is 0. Larger values saturate.
      background: ``(H, W, 3)`` float image in ``[0, 1]`` to blend under the colours
        (``alpha`` of colour, ``1 - alpha`` of image).
      alpha: opacity of the colours over ``background``.
      legend: draw the colour bar with tick labels.
      zoom: integer nearest-neighbour magnification of the map (1: one map pixel per
        image pixel).

    Returns:
      ``(image, meta)``: a Pillow RGB image whose top-left ``(W * zoom, H * zoom)`` region
      is the map (the legend strip, when drawn, is to its right; the canvas is at least
      ``MIN_LEGEND_HEIGHT`` tall, padded below the map), and ``meta``, a dict of the scale
      and geometry (``vmin``, ``vmax``, ``map_width``, ``map_height``, ``legend_x``,
      ``legend_width``) suitable for PNG text chunks.
    """
    dmap = np.asarray(dmap, np.float64)
    if dmap.ndim != 2:
        raise ValueError(f"dmap has shape {dmap.shape}: expected (H, W)")
    if not isinstance(zoom, int) or zoom < 1:
        raise ValueError(f"zoom={zoom!r}: expected a positive integer")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: expected a value in [0, 1]")
    if vmax is None:
        finite = dmap[np.isfinite(dmap)]
        vmax = float(finite.max()) if finite.size else 0.0
        if vmax <= 0:  # identical images: an all-zero map, shown on a 0..1 scale
            vmax = 1.0
    elif not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax={vmax!r}: expected a positive finite value")
    rgb = colormap(dmap / vmax).astype(np.float64)
    if background is not None:
        bg = np.asarray(background, np.float64)
        if bg.shape != dmap.shape + (3,):
            raise ValueError(f"background has shape {bg.shape}: expected {dmap.shape + (3,)} (H, W, 3)")
        rgb = alpha * rgb + (1.0 - alpha) * 255.0 * np.clip(bg, 0.0, 1.0)
    img = Image.fromarray(np.round(rgb).astype(np.uint8))
    h, w = dmap.shape
    if zoom > 1:
        img = img.resize((w * zoom, h * zoom), Image.Resampling.NEAREST)
    mw, mh = img.size
    meta = {
        "vmin": 0.0,
        "vmax": float(vmax),
        "map_width": mw,
        "map_height": mh,
        "legend_x": mw,
        "legend_width": 0,
    }
    if not legend:
        return img, meta
    lay = legend_layout(mh, float(vmax))
    canvas = Image.new("RGB", (mw + lay["width"], lay["height"]), _BACKGROUND)
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = mw + lay["margin"]
    x1 = x0 + lay["bar_width"]
    top, bottom = lay["top"], lay["bottom"]
    rows = np.arange(top, bottom + 1)
    values = (bottom - rows) / max(1, bottom - top)  # 1 at the top, 0 at the bottom
    bar = colormap(values)[:, None, :].repeat(x1 - x0, axis=1)
    canvas.paste(Image.fromarray(bar), (x0, top))
    draw.rectangle((x0 - 1, top - 1, x1, bottom + 1), outline=_INK)
    font = lay["font"]
    for t, label in zip(ticks(float(vmax)), lay["labels"], strict=True):
        y = bottom - (t / vmax) * (bottom - top)
        yi = int(round(y))
        draw.line((x1, yi, x1 + lay["tick"], yi), fill=_INK)
        _, t_, _, b_ = draw.textbbox((0, 0), label, font=font)
        draw.text((x1 + lay["tick"] + 2, yi - (t_ + b_) / 2), label, fill=_INK, font=font)
    meta["legend_width"] = lay["width"]
    return canvas, meta
