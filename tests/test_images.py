"""Tests for captioning.images: every bad input is a one-line ImageError naming the file,
and every pixel format arrives as correct RGB."""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from captioning.errors import UserError
from captioning.images import MAX_PIXELS, ImageError, load_image


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- bad inputs


def test_image_error_is_user_error():
    assert issubclass(ImageError, UserError)
    assert MAX_PIXELS >= 10_000_000


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*no such file"):
        load_image(path)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png.*0 bytes"):
        load_image(path)
    with pytest.raises(ImageError, match="0 bytes"):
        load_image(b"")
    with pytest.raises(ImageError, match=r"stream\.png.*0 bytes"):
        load_image(io.BytesIO(b""), name="stream.png")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n" * 10)
    with pytest.raises(ImageError, match=r"notes\.jpg.*not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    buf = io.BytesIO()
    _noise(64, 64).save(buf, format=fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{fmt.lower()}.*truncated"):
        load_image(path)
    # The global switch that makes PIL accept truncated files must stay off.
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_header_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(50_000, 50_000))  # 2.5 GP claimed, ~100 bytes on disk
    with pytest.raises(ImageError, match=r"bomb\.png: image is 2,500,000,000 pixels, over the limit of 150,000,000 "
                                         r"pixels; .* raise the limit \(--max-pixels"):
        load_image(path)


def test_bomb_beyond_pil_limit_never_leaks_pil_errors(tmp_path):
    # 400 MP is above PIL's own hard limit (2 * MAX_IMAGE_PIXELS): PIL raises while opening.
    pil_limit = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20_000, 20_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"huge\.png: image is 400,000,000 pixels, over Pillow's own limit"):
            load_image(path, max_pixels=None)
        # 100 MP sits in PIL's "warning" band: our limit answers, PIL's warning stays silent.
        warn_path = tmp_path / "warn.png"
        warn_path.write_bytes(_png_header_only(10_000, 10_000))
        with pytest.raises(ImageError, match=r"warn\.png.*--max-pixels"):
            load_image(warn_path, max_pixels=50_000_000)
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's global setting is left alone


def test_small_max_pixels_rejects_real_image(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), "white").save(path)
    with pytest.raises(ImageError, match=r"big\.png.*300x200 = 60,000 pixels.*1,000"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_name_overrides_label_for_bytes():
    with pytest.raises(ImageError, match=r"^upload\.jpg: not an image"):
        load_image(b"GIF89a? nope", name="upload.jpg")


def test_unsupported_source_type():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# ---------------------------------------------------------------- sources


def test_sources_path_bytes_file_pil(tmp_path):
    im = _noise(20, 10)
    path = tmp_path / "a.png"
    im.save(path)
    expected = np.asarray(im)
    results = [
        load_image(path),
        load_image(str(path)),
        load_image(path.read_bytes()),
        load_image(io.BytesIO(path.read_bytes())),
        load_image(im),
    ]
    with open(path, "rb") as fh:
        results.append(load_image(fh))
    for out in results:
        assert out.mode == "RGB"
        assert out.size == (20, 10)
        assert np.array_equal(np.asarray(out), expected)
    # A PIL input is never returned as the same object (callers may mutate the result).
    assert results[4] is not im


def test_unseekable_stream():
    data = _png_bytes(_noise(8, 8))

    class Pipe(io.RawIOBase):
        def __init__(self):
            self._buf = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert load_image(io.BufferedReader(Pipe())).size == (8, 8)


# ---------------------------------------------------------------- orientation


def test_exif_orientation_6_is_rotated(tmp_path):
    # 32 wide x 16 tall, red 8x8 block top-left, blue elsewhere; orientation 6 means
    # "rotate 90 degrees clockwise to display", so the red block ends top-right.
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:, :] = (0, 0, 255)
    arr[:8, :8] = (255, 0, 0)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    im.save(path, quality=100, exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (16, 32)
    r, g, b = out.getpixel((12, 3))
    assert r > 200 and b < 60
    r, g, b = out.getpixel((3, 3))
    assert b > 200 and r < 60


# ---------------------------------------------------------------- modes


def test_palette_with_transparency_composited_on_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.info["transparency"] = 0  # index 0 (red) is fully transparent
    path = tmp_path / "pal.png"
    im.save(path, transparency=0)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 255, 0)


def test_palette_without_transparency(tmp_path):
    im = Image.new("P", (1, 1))
    im.putpalette([10, 20, 30] + [0] * 765)
    path = tmp_path / "pal.gif"
    im.save(path)
    assert load_image(path).getpixel((0, 0)) == (10, 20, 30)


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 0, 0))
    im.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(_png_bytes(im))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((2, 0)))


def test_la_and_pa_composited_on_white():
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 255))
    la.putpixel((1, 0), (0, 0))
    out = load_image(_png_bytes(la))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)

    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 255] + [0] * 765)
    pa.putpixel((0, 0), (0, 255))
    pa.putpixel((1, 0), (0, 0))
    out = load_image(pa)
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_cmyk(tmp_path):
    im = Image.new("CMYK", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))  # paper white
    im.putpixel((1, 0), (0, 255, 255, 0))  # red
    im.putpixel((2, 0), (0, 0, 0, 255))  # black
    path = tmp_path / "cmyk.jpg"
    im.save(path, quality=100)
    out = load_image(path)
    assert out.mode == "RGB"
    white, red, black = (out.getpixel((x, 0)) for x in range(3))
    assert min(white) > 240
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert max(black) < 20


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_scaled_not_clipped(mode):
    values = np.array([[0, 257, 32896, 65535, 1000]], dtype=np.uint16)
    raw = values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    im = Image.frombytes(mode, (5, 1), raw)
    assert im.mode == mode
    out = load_image(im)
    got = [out.getpixel((x, 0)) for x in range(5)]
    assert got == [(0, 0, 0), (1, 1, 1), (128, 128, 128), (255, 255, 255), (4, 4, 4)]


def test_16bit_png_roundtrip():
    values = np.array([[0, 65535, 32896]], dtype=np.uint16)
    data = _png_bytes(Image.fromarray(values))
    out = load_image(data)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 255, 128]


def test_mode_i_and_f():
    ints = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert ints.mode == "I"
    out = load_image(ints)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]

    neg = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))
    out = load_image(neg)
    low, mid, high = (out.getpixel((x, 0))[0] for x in range(3))
    assert (low, high) == (0, 255) and mid in (127, 128)  # stretched min..max

    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    out = load_image(unit)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_grayscale_and_bilevel(tmp_path):
    gray = Image.new("L", (2, 1))
    gray.putpixel((0, 0), 7)
    gray.putpixel((1, 0), 200)
    out = load_image(_png_bytes(gray))
    assert out.getpixel((0, 0)) == (7, 7, 7) and out.getpixel((1, 0)) == (200, 200, 200)

    bw = Image.new("1", (2, 1))
    bw.putpixel((1, 0), 1)
    path = tmp_path / "bw.png"
    bw.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


def test_grayscale_with_transparency_key():
    gray = Image.new("L", (2, 1), 0)
    gray.putpixel((1, 0), 90)
    buf = io.BytesIO()
    gray.save(buf, format="PNG", transparency=0)
    out = load_image(buf.getvalue())
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (90, 90, 90)


def test_unsupported_mode_is_image_error(monkeypatch):
    # Every mode Pillow 12 can create converts; simulate an exotic one from a future plugin.
    class Exotic(Image.Image):
        @property
        def mode(self):
            return "XYZ"

        def convert(self, *args, **kwargs):
            raise ValueError("conversion from XYZ not supported")

    exotic = Exotic()
    exotic._size = (2, 2)
    monkeypatch.setattr("PIL.ImageOps.exif_transpose", lambda im, **kw: im)
    with pytest.raises(ImageError, match=r"exotic\.tif: unsupported image mode 'XYZ'"):
        load_image(exotic, name="exotic.tif")


# ---------------------------------------------------------------- downscale


def test_downscale_keeps_aspect_and_budget(tmp_path):
    path = tmp_path / "wide.png"
    _noise(400, 100).save(path)
    out = load_image(path, downscale_pixels=10_000)
    w, h = out.size
    assert w * h <= 10_000
    assert w * h >= 9_000
    assert abs(w / h - 4.0) < 0.1
    # Small images are left alone.
    assert load_image(path, downscale_pixels=1_000_000).size == (400, 100)


def test_downscale_jpeg_uses_draft_and_fits(tmp_path):
    path = tmp_path / "photo.jpg"
    _noise(1024, 768).save(path, quality=90)
    out = load_image(path, downscale_pixels=50_000)
    w, h = out.size
    assert w * h <= 50_000 and w * h > 45_000
    assert abs(w / h - 4 / 3) < 0.02


def test_downscale_after_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "tall.jpg"
    _noise(400, 200).save(path, exif=exif.tobytes())
    out = load_image(path, downscale_pixels=20_000)
    assert out.width < out.height  # rotated to portrait
    assert out.width * out.height <= 20_000


# ---------------------------------------------------------------- threads


def test_thread_safe_with_different_limits(tmp_path):
    path = tmp_path / "t.png"
    _noise(100, 100).save(path)
    errors, sizes = [], []

    def worker(i):
        try:
            if i % 2:
                with pytest.raises(ImageError):
                    load_image(path, max_pixels=100)
            else:
                sizes.append(load_image(path, downscale_pixels=2_500).size)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sizes == [(50, 50)] * 8


def test_a_48_megapixel_phone_photo_is_within_the_default_limit(tmp_path):
    """8064 x 6048 (48.8 MP) was refused by the old 40 MP cap; the header-only file fails as
    truncated, not as too large."""
    path = tmp_path / "phone.png"
    path.write_bytes(_png_header_only(8064, 6048))
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert "limit" not in str(err.value)
