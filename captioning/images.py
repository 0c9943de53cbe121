"""Image hygiene in one place: every entry point opens images through :func:`load_image`.

It turns whatever a user hands us (a path, bytes, a file object or a PIL image) into a fully
decoded RGB image, or raises :class:`ImageError` with a one-line message that names the file.
Nothing here changes PIL's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``); the size limit is our own ``max_pixels`` argument, so
several threads (the Space) can call it with different limits at once.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioning.errors import UserError
from captioning.files import special_file_problem

__all__ = ["MAX_PIXELS", "ImageError", "ImageSource", "load_image"]

#: Default pixel limit (width * height) above which an image is refused as a likely
#: decompression bomb: 150 MP covers real photos (a 48 MP phone is 8064 x 6048, a 102 MP
#: medium-format camera 11648 x 8736; 450 MB decoded) while refusing the 100k x 100k PNGs
#: that exhaust memory. Every entry point can set it (--max-pixels, data.max_pixels); above
#: ~179 MP Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS) refuses first.
MAX_PIXELS = 150_000_000

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image


class ImageError(UserError):
    """An image that cannot be used: missing, empty, not an image, truncated, too large."""


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = MAX_PIXELS,
    downscale_pixels: int | None = None,
) -> Image.Image:
    """Open ``source`` and return a fully loaded RGB image, upright per its EXIF orientation.

    ``source`` is a path, the encoded bytes, a binary file object or a PIL image. ``name``
    labels the image in error messages (default: the path, or the file object's name).
    Images with more than ``max_pixels`` pixels (read from the header, before decoding) are
    refused; ``None`` disables our limit (PIL's own, ``Image.MAX_IMAGE_PIXELS``, still
    applies). When ``downscale_pixels`` is given, larger images are resized (aspect kept,
    Lanczos) to at most that many pixels; JPEGs are decoded at reduced scale first.

    Conversions: alpha (RGBA, LA, PA, palette or grayscale with transparency) is composited
    on white; 16-bit images (I;16*) are scaled 0..65535 -> 0..255; 32-bit integer (I) images
    are scaled the same way when their values lie in 0..65535, else stretched min..max;
    float (F) images are scaled from 0..1, kept from 0..255, else stretched min..max;
    CMYK goes through the embedded ICC profile when there is one, else PIL's formula.

    Raises :class:`ImageError` (a :class:`UserError`) naming the image for every unusable
    input; it never lets PIL's DecompressionBombWarning/Error escape.
    """
    label = name or _default_label(source)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")
    if downscale_pixels is not None and downscale_pixels < 1:
        raise ValueError(f"downscale_pixels must be positive or None, got {downscale_pixels}")
    _silence_pil_bomb_warning()

    if isinstance(source, Image.Image):
        return _prepare(source, label, max_pixels, downscale_pixels, is_input=True)

    stream, owned = _open_stream(source, label)
    try:
        try:
            im = Image.open(stream)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # PIL checks its own global limit inside Image.open, before we see the size.
            raise _bomb_error(label, e, max_pixels) from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{label}: not an image file (or a format Pillow cannot read)"
            ) from None
        except Exception as e:
            raise ImageError(f"{label}: cannot read the image header ({_describe(e)})") from None
        with im:
            return _prepare(im, label, max_pixels, downscale_pixels, is_input=False)
    finally:
        if owned:
            stream.close()


def _default_label(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<image bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", None) or "<in-memory image>"
    file_name = getattr(source, "name", None)
    return file_name if isinstance(file_name, str) else "<image stream>"


def _open_stream(source: object, label: str) -> tuple[IO[bytes], bool]:
    """Return a seekable binary stream for ``source`` and whether we must close it."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        problem = special_file_problem(path)  # a FIFO would block the read; a folder, a link loop
        if problem:
            raise ImageError(f"{label} is {problem.replace('a folder, not a file', 'a folder, not an image file')}")
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except OSError as e:
            raise ImageError(f"{label}: cannot access the file ({e.strerror or e})") from None
        if st.st_size == 0:
            raise ImageError(f"{label}: empty file (0 bytes), not an image")
        try:
            return open(path, "rb"), True
        except OSError as e:
            raise ImageError(f"{label}: cannot open the file ({e.strerror or e})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{label}: empty data (0 bytes), not an image")
        return io.BytesIO(bytes(source)), True
    if hasattr(source, "read"):
        stream = source
        try:
            seekable = stream.seekable()
        except (AttributeError, ValueError):
            seekable = False
        if not seekable:
            stream = io.BytesIO(stream.read())
            owned = True
        else:
            owned = False
        start = stream.tell()
        empty = not stream.read(1)
        stream.seek(start)
        if empty:
            raise ImageError(f"{label}: empty data (0 bytes), not an image")
        return stream, owned
    raise TypeError(
        f"load_image expects a path, bytes, a binary file or a PIL image, got {type(source)!r}"
    )


def _prepare(
    im: Image.Image,
    label: str,
    max_pixels: int | None,
    downscale_pixels: int | None,
    *,
    is_input: bool,
) -> Image.Image:
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageError(f"{label}: image has no pixels ({width}x{height})")
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageError(
            f"{label}: image is {width}x{height} = {pixels:,} pixels, over the limit of "
            f"{max_pixels:,}; shrink the image or raise the limit (--max-pixels, or data.max_pixels in a recipe)"
        )
    target = _fit_size(width, height, downscale_pixels)
    try:
        if target is not None and not is_input and getattr(im, "format", None) == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale (never below the requested size):
            # a 24 MP photo for the Space then costs a fraction of the decode time and memory.
            im.draft(None, target)
        im.load()
        upright = ImageOps.exif_transpose(im)
        rgb = _to_rgb(upright if upright is not None else im, label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(label, e, max_pixels) from None
    except Exception as e:
        raise ImageError(
            f"{label}: image data is truncated or corrupt ({_describe(e)})"
        ) from None

    if downscale_pixels is not None and rgb.width * rgb.height > downscale_pixels:
        new_size = _fit_size(rgb.width, rgb.height, downscale_pixels)
        # reducing_gap: box-reduce most of the way, then Lanczos; same look, much faster.
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if rgb is im:
        # Never hand back the caller's own object (or one tied to our closed file).
        rgb = rgb.copy()
    return rgb


def _fit_size(width: int, height: int, budget: int | None) -> tuple[int, int] | None:
    """Largest size with the same aspect ratio and at most ``budget`` pixels (None: fits)."""
    if budget is None or width * height <= budget:
        return None
    scale = math.sqrt(budget / (width * height))
    new_w = max(1, math.floor(width * scale))
    new_h = max(1, math.floor(height * scale))
    while new_w * new_h > budget:  # float rounding at the edge; at most a step or two
        if new_w >= new_h:
            new_w -= 1
        else:
            new_h -= 1
    return new_w, new_h


_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def _to_rgb(im: Image.Image, label: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT:
        return _gray_to_rgb(_scale_16bit(np.asarray(im)))
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return _gray_to_rgb(_scale_16bit(arr))
        return _gray_to_rgb(_stretch(arr))
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            return _gray_to_rgb(np.rint(arr * 255.0).astype(np.uint8))
        if lo >= 0.0 and hi <= 255.0:
            return _gray_to_rgb(np.rint(arr).astype(np.uint8))
        return _gray_to_rgb(_stretch(arr))
    if mode == "CMYK":
        return _cmyk_to_rgb(im)

    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    if mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
        has_alpha = True
    try:
        if has_alpha:
            if mode == "La":
                # Premultiplied luminance: PIL has no route from "La" to RGBA.
                im = _unpremultiply_la(im)
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except ValueError as e:
        raise ImageError(f"{label}: unsupported image mode {mode!r} ({e})") from None


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    # Round to nearest: 65535 -> 255, 257*k -> k (a plain >> 8 would bias dark).
    wide = arr.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).convert("RGB")


def _unpremultiply_la(im: Image.Image) -> Image.Image:
    lum, alpha = (np.asarray(band, dtype=np.float64) for band in im.split())
    with np.errstate(divide="ignore", invalid="ignore"):
        straight = np.where(alpha > 0, np.clip(lum * 255.0 / alpha, 0, 255), 0)
    bands = [Image.fromarray(np.rint(b).astype(np.uint8)) for b in (straight, alpha)]
    return Image.merge("LA", bands)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImportError, OSError, ValueError, TypeError) as e:
            # A broken profile should not make a usable photo unusable: the plain formula
            # below gives the same picture with slightly different colours.
            warnings.warn(f"ignoring an unusable CMYK ICC profile ({e})", stacklevel=3)
    return im.convert("RGB")


def _bomb_error(label: str, exc: BaseException, max_pixels: int | None) -> ImageError:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(match.group(1)):,} pixels" if match else "too large"
    if max_pixels is not None and (Image.MAX_IMAGE_PIXELS is None or max_pixels <= 2 * Image.MAX_IMAGE_PIXELS):
        return ImageError(
            f"{label}: image is {size}, over the limit of {max_pixels:,} pixels; "
            "shrink the image or raise the limit (--max-pixels, or data.max_pixels in a recipe)"
        )
    return ImageError(
        f"{label}: image is {size}, over Pillow's own limit of "
        f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} (PIL.Image.MAX_IMAGE_PIXELS x 2); "
        "shrink the image or raise PIL.Image.MAX_IMAGE_PIXELS"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _silence_pil_bomb_warning() -> None:
    """Keep PIL's DecompressionBombWarning from reaching users: max_pixels is our limit.

    ``warnings.catch_warnings`` is not thread-safe (it swaps the process-wide filter list),
    so instead we keep one narrow "ignore" filter for that single category at the front.
    It is re-added when missing because test runners reset the filters between tests.
    """
    first = warnings.filters[0] if warnings.filters else None
    if first is None or first[0] != "ignore" or first[2] is not Image.DecompressionBombWarning:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
