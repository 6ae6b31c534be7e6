"""lpips_jax.io.read_image: formats, bit depths, modes, EXIF orientation, errors, resizing.

The expected arrays are built independently of the reader: from the pixels written
(``u8 / 255``, ``u16 / 65535``) and, for 16-bit colour PNGs, from files encoded here by
hand (every PNG row filter), since Pillow cannot write them.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import lpips_jax
from lpips_jax import io as lio


def _pixels(h=12, w=10, seed=0) -> np.ndarray:
    """A smooth-ish uint8 RGB image with no symmetry (so flips and turns show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 20, yy * 15, (xx + 2 * yy) * 7], axis=-1)
    return np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


def _png16(path, arr: np.ndarray, seed: int = 0) -> None:
    """Write a 16-bit RGB (3 channels) or RGBA (4) PNG, each row with a random filter."""
    h, w, c = arr.shape
    ctype = {3: 2, 4: 6}[c]
    bpp = 2 * c
    data = arr.astype(">u2").reshape(h, w * bpp // 2).view(np.uint8).reshape(h, w * bpp)
    rng = np.random.default_rng(seed)
    out = bytearray()
    prior = np.zeros(w * bpp, np.int64)
    for y in range(h):
        cur = data[y].astype(np.int64)
        ftype = int(rng.integers(0, 5)) if y else int(y % 5)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        if ftype == 0:
            f = cur
        elif ftype == 1:
            f = cur - left
        elif ftype == 2:
            f = cur - prior
        elif ftype == 3:
            f = cur - (left + prior) // 2
        else:
            p = left + prior - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
            f = cur - pred
        out += bytes([ftype]) + (f % 256).astype(np.uint8).tobytes()
        prior = cur

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
    path.write_bytes(png + chunk(b"IEND", b""))


def _check(a: np.ndarray, shape) -> None:
    assert a.dtype == np.float32
    assert a.shape == shape
    assert a.flags.c_contiguous
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_public_names():
    """(The keyword-only options of every public function: test_api.py::test_signatures.)"""
    assert lpips_jax.read_image is lio.read_image
    assert "read_image" in lpips_jax.__all__
    assert {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"} <= set(lio.image_extensions())
    assert lio.is_image_file("X.PNG") and not lio.is_image_file("notes.txt")


@pytest.mark.parametrize(
    "fmt, ext, kwargs",
    [("PNG", "png", {}), ("BMP", "bmp", {}), ("WEBP", "webp", {"lossless": True}),
     ("TIFF", "tif", {})],
)  # fmt: skip
def test_lossless_rgb8_exact(tmp_path, fmt, ext, kwargs):
    px = _pixels()
    p = tmp_path / f"x.{ext}"
    Image.fromarray(px).save(p, format=fmt, **kwargs)
    a, info = lio.read_image(p, return_info=True)
    _check(a, (12, 10, 3))
    np.testing.assert_array_equal(a, px.astype(np.float32) / 255)
    assert (info.format, info.mode, info.bits, info.size) == (fmt, "RGB", 8, (10, 12))
    assert not info.alpha_dropped and not info.exif_transposed and not info.resized


def test_jpeg(tmp_path):
    px = _pixels()
    p = tmp_path / "x.jpg"
    Image.fromarray(px).save(p, quality=90)
    with Image.open(p) as im:
        want = np.asarray(im.convert("RGB"), np.float32) / 255
    a = lio.read_image(p)
    _check(a, (12, 10, 3))
    np.testing.assert_array_equal(a, want)


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(_pixels()).convert("CMYK").save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
        want = np.asarray(im.convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(lio.read_image(p), want)


def test_grayscale_and_bilevel_replicated(tmp_path):
    g = _pixels()[..., 0]
    Image.fromarray(g).save(tmp_path / "g.png")
    a = lio.read_image(tmp_path / "g.png")
    _check(a, (12, 10, 3))
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], g.astype(np.float32) / 255)
    bits = g > 128
    Image.fromarray(bits).save(tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "1"
    b = lio.read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(b, np.repeat(bits[..., None], 3, -1).astype(np.float32))


def test_palette_with_and_without_transparency(tmp_path):
    px = _pixels()
    pal = Image.fromarray(px).quantize(16)
    pal.save(tmp_path / "p.png")
    want = np.asarray(pal.convert("RGB"), np.float32) / 255
    a, info = lio.read_image(tmp_path / "p.png", return_info=True)
    np.testing.assert_array_equal(a, want)
    assert info.mode == "P" and not info.alpha_dropped
    pal.save(tmp_path / "pt.png", transparency=0)
    a, info = lio.read_image(tmp_path / "pt.png", return_info=True)
    np.testing.assert_array_equal(a, want)  # colours kept, transparency ignored
    assert info.alpha_dropped
    pal.save(tmp_path / "p.gif")
    np.testing.assert_array_equal(lio.read_image(tmp_path / "p.gif"), want)


def test_alpha_dropped_not_composited(tmp_path):
    px = _pixels()
    alpha = np.linspace(0, 255, px.shape[0] * px.shape[1]).reshape(px.shape[:2]).astype(np.uint8)
    Image.fromarray(np.dstack([px, alpha])).save(tmp_path / "a.png")
    a, info = lio.read_image(tmp_path / "a.png", return_info=True)
    np.testing.assert_array_equal(a, px.astype(np.float32) / 255)
    assert info.alpha_dropped and info.mode == "RGBA"
    g = px[..., 1]
    Image.fromarray(np.dstack([g, alpha])).save(tmp_path / "la.png")
    a, info = lio.read_image(tmp_path / "la.png", return_info=True)
    np.testing.assert_array_equal(a, np.repeat(g[..., None], 3, -1).astype(np.float32) / 255)
    assert info.alpha_dropped


def test_gray16_png_and_tiff(tmp_path):
    rng = np.random.default_rng(1)
    g = rng.integers(0, 65536, (9, 7)).astype(np.uint16)
    for name in ("g.png", "g.tif"):
        Image.fromarray(g).save(tmp_path / name)
        a, info = lio.read_image(tmp_path / name, return_info=True)
        _check(a, (9, 7, 3))
        assert info.bits == 16
        np.testing.assert_array_equal(a[..., 2], g.astype(np.float32) / 65535)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb16_png_full_precision(tmp_path, channels):
    rng = np.random.default_rng(channels)
    px = rng.integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    _png16(tmp_path / "c.png", px, seed=channels)
    a, info = lio.read_image(tmp_path / "c.png", return_info=True)
    _check(a, (9, 11, 3))
    assert info.bits == 16
    assert info.alpha_dropped == (channels == 4)
    np.testing.assert_array_equal(a, px[..., :3].astype(np.float32) / 65535)


def test_rgb16_tiff_full_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    px = np.random.default_rng(3).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", px, photometric="rgb")
    a, info = lio.read_image(tmp_path / "c.tif", return_info=True)
    assert info.bits == 16
    np.testing.assert_array_equal(a, px.astype(np.float32) / 65535)


def test_int32_and_float_modes(tmp_path):
    i32 = np.array([[0, 1000, 65535, 70000]], np.int32).repeat(3, 0)
    Image.fromarray(i32).save(tmp_path / "i.tif")
    a = lio.read_image(tmp_path / "i.tif")
    np.testing.assert_allclose(a[0, :, 0], [0, 1000 / 65535, 1, 1], rtol=1e-6)
    f = np.array([[-0.5, 0.25, 0.5, 2.0]], np.float32).repeat(3, 0)
    Image.fromarray(f).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(lio.read_image(tmp_path / "f.tif")[0, :, 1], [0, 0.25, 0.5, 1])


# EXIF orientation: how the stored pixels are shown (EXIF 2.32, tag 0x0112).
_SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirror horizontal
    3: lambda a: a[::-1, ::-1],  # rotate 180
    4: lambda a: a[::-1],  # mirror vertical
    5: lambda a: np.rot90(a[:, ::-1], 1),  # mirror horizontal, rotate 270 CW
    6: lambda a: np.rot90(a, -1),  # rotate 90 CW
    7: lambda a: np.rot90(a[:, ::-1], -1),  # mirror horizontal, rotate 90 CW
    8: lambda a: np.rot90(a, 1),  # rotate 270 CW
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_exif_orientation(tmp_path, orientation, ext):
    px = _pixels(12, 10)
    im = Image.fromarray(px)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o.{ext}"
    im.save(p, exif=exif, **({"quality": 100, "subsampling": 0} if ext == "jpg" else {}))
    with Image.open(p) as stored:
        raw = np.asarray(stored.convert("RGB"), np.float32) / 255
    a, info = lio.read_image(p, return_info=True)
    np.testing.assert_array_equal(a, np.ascontiguousarray(_SHOWN[orientation](raw)))
    assert info.exif_transposed == (orientation != 1)
    assert info.size == (a.shape[1], a.shape[0])
    assert a.flags.c_contiguous


def test_exif_orientation_of_16bit_colour(tmp_path):
    """The hand-decoded low bytes are turned with the high bytes."""
    px = np.random.default_rng(5).integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    _png16(tmp_path / "c.png", px)
    # Pillow cannot write 16-bit colour: insert an eXIf chunk before IEND by hand.
    exif = Image.Exif()
    exif[0x0112] = 6
    body = exif.tobytes()
    crc = zlib.crc32(b"eXIf" + body) & 0xFFFFFFFF
    data = (tmp_path / "c.png").read_bytes()
    iend = data.rindex(b"IEND") - 4
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", crc)
    (tmp_path / "r.png").write_bytes(data[:iend] + chunk + data[iend:])
    a, info = lio.read_image(tmp_path / "r.png", return_info=True)
    assert info.exif_transposed and info.bits == 16
    np.testing.assert_array_equal(a, np.rot90(px, -1).astype(np.float32) / 65535)


def test_unreadable_files_name_the_path(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(lio.ImageError, match=r"missing\.png: no such file") as e:
        lio.read_image(missing)
    assert e.value.path == str(missing)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(lio.ImageError, match=r"bad\.png: cannot read image"):
        lio.read_image(bad)
    Image.fromarray(_pixels(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(lio.ImageError, match=r"cut\.png: cannot read image"):
        lio.read_image(tmp_path / "cut.png")
    with pytest.raises(lio.ImageError, match="is a folder"):
        lio.read_image(tmp_path)
    assert issubclass(lio.ImageError, ValueError)


def test_resize(tmp_path):
    px = _pixels(12, 10)
    Image.fromarray(px).save(tmp_path / "x.png")
    a, info = lio.read_image(tmp_path / "x.png", resize=(20, 8), return_info=True)
    _check(a, (8, 20, 3))
    assert info.resized and info.size == (10, 12)
    same, info = lio.read_image(tmp_path / "x.png", resize=(10, 12), return_info=True)
    np.testing.assert_array_equal(same, px.astype(np.float32) / 255)
    assert not info.resized
    # A constant image stays constant (bicubic weights sum to one).
    flat = np.full((5, 7, 3), 0.25, np.float32)
    np.testing.assert_allclose(lio.resize_image(flat, (13, 9)), 0.25, atol=1e-6)
    for bad in [(0, 5), (5,), "64x64", (2.5, 3)]:
        with pytest.raises(ValueError, match="expected \\(width, height\\)"):
            lio.read_image(tmp_path / "x.png", resize=bad)


def test_read_pixels_and_to_unit(tmp_path):
    """``to_unit(read_pixels(p))`` is ``read_image(p)`` exactly; the dtype gives the scale."""
    px = _pixels()
    Image.fromarray(px).save(tmp_path / "8.png")
    Image.fromarray(px[..., 0].astype(np.uint16) * 257).save(tmp_path / "16.png")
    Image.fromarray(np.dstack([px, px[..., :1]])).save(tmp_path / "a.png")
    for name, dtype in [("8.png", np.uint8), ("16.png", np.uint16), ("a.png", np.uint8)]:
        raw = lio.read_pixels(tmp_path / name)
        assert raw.dtype == dtype and raw.shape == (12, 10, 3)
        np.testing.assert_array_equal(lio.to_unit(raw), lio.read_image(tmp_path / name))
    resized = lio.read_pixels(tmp_path / "8.png", resize=(5, 6))
    assert resized.dtype == np.float32
    np.testing.assert_array_equal(resized, lio.read_image(tmp_path / "8.png", resize=(5, 6)))
    with pytest.raises(TypeError, match="dtype int32: expected uint8, uint16 or float32"):
        lio.to_unit(np.zeros(3, np.int32))
