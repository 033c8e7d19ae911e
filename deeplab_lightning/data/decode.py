"""Image and label-map files to arrays, with the fastest decoder for each kind of file.

Measured by ``benchmarks/data_path.py`` (one core, photo-like images; ``benchmarks/README.md``): a 500x375 JPEG
decodes in 0.9 ms with simplejpeg (libjpeg-turbo) against 1.2 ms with OpenCV or torchvision.io and 1.9 ms with
Pillow, all four giving the same pixels; a 2048x1024 RGB PNG in 41 ms with libspng (pyspng) against 70-80 ms with
OpenCV, torchvision.io and Pillow; a VOC label map (500x375 palette PNG) in 0.7 ms with libspng against 1.0 ms
with Pillow. Files the fast decoders do not handle as Pillow would (EXIF-rotated photos, 16-bit or CMYK images)
go through Pillow, so every file decodes to what Pillow gives; so do PNGs whose chunk checksums are wrong (Pillow
refuses them; libspng as pyspng builds it would not check).

A file declaring more pixels than Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million; the
environment variable ``DEEPLAB_MAX_IMAGE_PIXELS`` sets it) is refused from its header, before any decoder
allocates its pixels: a 200 kB PNG may declare 15000x15000 (675 MB decoded).
"""
from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyspng
import simplejpeg
from PIL import Image, ImageOps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap height and width
PIXEL_LIMIT_VARIABLE = "DEEPLAB_MAX_IMAGE_PIXELS"


class ImageTooLarge(ValueError):
    """An image or label file that declares more pixels than :func:`max_image_pixels`."""


def max_image_pixels() -> int | None:
    """The most pixels a file may declare: ``DEEPLAB_MAX_IMAGE_PIXELS`` where set (``none``: no limit), which then
    also becomes Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (so that Pillow's own check agrees); else Pillow's."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if value:
        if value.lower() != "none" and not value.isdigit():
            raise ValueError(f"{PIXEL_LIMIT_VARIABLE}={value!r} is not a number of pixels; set it to an integer, "
                             f"or to none for no limit")
        Image.MAX_IMAGE_PIXELS = None if value.lower() == "none" else int(value)
    return Image.MAX_IMAGE_PIXELS


def too_large(path: Path | str, declared: str, what: str = "Image") -> ImageTooLarge:
    """The error for ``path``, which declares ``declared`` (e.g. ``15000x15000 pixels``): the file, the limit and
    how to raise it."""
    return ImageTooLarge(
        f"{what} {path} declares {declared}, more than the limit of {Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's "
        f"PIL.Image.MAX_IMAGE_PIXELS), so it is not decoded; shrink the file, or if such images are intended raise "
        f"the limit with the environment variable {PIXEL_LIMIT_VARIABLE}=<pixels>")


def check_declared_size(path: Path | str, width: int, height: int, what: str = "Image") -> None:
    """Raise :class:`ImageTooLarge` naming ``path`` when ``width`` x ``height`` exceeds :func:`max_image_pixels`."""
    limit = max_image_pixels()
    if limit is not None and width * height > limit:
        raise too_large(path, f"{width}x{height} pixels ({width * height:,}, {3 * width * height / 1e6:,.0f} MB "
                              f"as RGB)", what)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG declares in its header; None for another kind of file or no readable header."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(JPEG_SIGNATURE):
        try:
            height, width = simplejpeg.decode_jpeg_header(data)[:2]
        except ValueError:  # no readable frame header: Pillow reads the file or names the problem
            return None
        return width, height
    return None


def _check_header(path: Path | str, data: bytes, what: str) -> None:
    """:func:`check_declared_size` on the size ``data``'s header declares, where it has one."""
    size = header_size(data)
    if size is not None:
        check_declared_size(path, *size, what=what)


@contextmanager
def open_checked(path: Path | str, what: str = "Image") -> Iterator[Image.Image]:
    """Pillow's lazy ``Image.open`` (header only), raising :class:`ImageTooLarge` before any pixel is decoded
    when the image declares more than :func:`max_image_pixels`."""
    max_image_pixels()  # Pillow's own check at open (twice its limit) follows DEEPLAB_MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # Pillow's warning over its limit: the file is refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as err:  # over twice the limit, refused by Pillow: said as for the others
        _check_header(path, Path(path).read_bytes(), what)  # a PNG or JPEG: named with its width and height
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise too_large(path, f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels", what) from None
    with img:
        check_declared_size(path, *img.size, what=what)
        yield img


def to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Pixel values as uint8 where their scale is unambiguous: integers within 0-255 as they are; floats within
    [0, 1] times 255 (torchvision's convention), floats within [0, 255] as they are (rounded); 16-bit values
    above 255 by their 8 high bits. Raises, naming ``what`` and the range found, for anything else (bool,
    complex, negative or larger values)."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == bool or np.iscomplexobj(values) or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{what}: pixel values of type {values.dtype} are not an image; give uint8 RGB (0-255)")
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = float(np.min(values)), float(np.max(values))
    floating = np.issubdtype(values.dtype, np.floating)
    if floating and not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{what}: the pixel values are not all finite")
    if low >= 0 and high <= 1 and floating:
        return np.rint(values * 255).astype(np.uint8)
    if low >= 0 and high <= 255:
        return np.rint(values).astype(np.uint8) if floating else values.astype(np.uint8)
    if not floating and low >= 0 and high <= 65535:
        return (values.astype(np.int64) >> 8).astype(np.uint8)
    raise ValueError(f"{what}: pixel values {low:g}..{high:g} fit neither 0-255, [0, 1] nor 16 bits; give uint8 "
                     f"RGB (0-255)")


def pil_to_rgb(img: Image.Image, what: str = "image") -> np.ndarray:
    """uint8 [H, W, 3]. Grayscale of more than 8 bits (modes I;16, I, F) is scaled by :func:`to_uint8` (PIL's
    ``convert`` would clip every value above 255 to white); palette, grayscale and RGBA images are converted
    (RGBA drops alpha)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = to_uint8(np.array(img), what)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(img.convert("RGB"))


def read_image_pil(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] through Pillow, turned upright by its EXIF orientation."""
    with open_checked(path) as img:
        img.load()
        return pil_to_rgb(ImageOps.exif_transpose(img), str(path))


ORIENTATION_KEYWORDS = (b"XML:com.adobe.xmp", b"Raw profile type exif", b"Raw profile type APP1")


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """(type, start, end) of each chunk of a PNG, or None unless every chunk is whole with its CRC right and the
    last is IEND: libspng (as pyspng builds it) skips the checksums, Pillow does not, and a flipped byte must
    not decode to wrong pixels or labels."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        end = pos + 12 + length
        if end > len(data) or zlib.crc32(data[pos + 4: end - 4]) != struct.unpack(">I", data[end - 4: end])[0]:
            return None
        chunks.append((data[pos + 4: pos + 8], pos, end))
        pos = end
    return chunks if chunks and chunks[-1][0] == b"IEND" else None


def _png_may_be_rotated(data: bytes, chunks: list[tuple[bytes, int, int]]) -> bool:
    """Whether a PNG carries an orientation Pillow would apply: an eXIf chunk, or XMP or EXIF in a text chunk."""
    for kind, start, _ in chunks:
        if kind == b"eXIf":
            return True
        if kind in (b"tEXt", b"zTXt", b"iTXt") and data[start + 8: start + 8 + 80].split(b"\0")[0] in \
                ORIENTATION_KEYWORDS:
            return True
    return False


def _decode_fast(data: bytes) -> np.ndarray | None:
    """RGB uint8 [H, W, 3] from libjpeg-turbo or libspng, or None where Pillow must decode the file."""
    if data.startswith(JPEG_SIGNATURE):
        if b"Exif" in data or b"Orientation" in data:  # EXIF or XMP may rotate it: Pillow reads and applies that
            return None
        try:
            if simplejpeg.decode_jpeg_header(data)[2] not in ("YCbCr", "Gray"):
                return None  # CMYK and YCCK: libjpeg-turbo and Pillow convert them differently
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:  # arithmetic coding, truncated: Pillow decodes it or names the problem
            return None
    if data.startswith(PNG_SIGNATURE) and len(data) > 26 and data[24] == 8:
        chunks = png_chunks(data)
        if chunks is None or _png_may_be_rotated(data, chunks):
            return None
        try:
            return pyspng.load(data, format="RGB")
        except Exception:  # pyspng raises a bare Exception; Pillow decodes the file or names the problem
            return None
    return None


def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file, upright by its EXIF orientation (as a viewer shows a phone photo,
    and as its label map is drawn); grayscale, palette, RGBA and 16-bit images converted to 8-bit RGB.
    Raises ValueError naming the file when it cannot be read, and :class:`ImageTooLarge` (from the header, before
    decoding) when it declares more pixels than :func:`max_image_pixels`."""
    try:
        data = Path(path).read_bytes()
        _check_header(path, data, "Image")
        fast = _decode_fast(data)
        return fast if fast is not None else read_image_pil(path)
    except ImageTooLarge:
        raise
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Image {path} does not exist; check the path") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read image {path}: {err}. Replace or remove the file.") from err


def _palette_as_grayscale(data: bytes, chunks: list[tuple[bytes, int, int]]) -> bytes:
    """An 8-bit palette PNG declared as 8-bit grayscale instead (IHDR colour type 3 -> 0; PLTE and tRNS, which
    grayscale may not carry, left out): the pixel bytes are untouched, so a grayscale decoder returns the
    palette indices, which are the labels."""
    parts = [data[:8]]
    for kind, start, end in chunks:
        if kind == b"IHDR":
            header = data[start + 8: end - 4]  # width, height, bit depth, colour type (index 9), ...
            header = header[:9] + b"\x00" + header[10:]
            parts.append(data[start: start + 8] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)))
        elif kind not in (b"PLTE", b"tRNS"):
            parts.append(data[start:end])
    return b"".join(parts)


def decode_labels(path: Path) -> np.ndarray:
    """Class indices uint8 [H, W] as stored (never rotated) in a palette or 8-bit grayscale PNG, or an SBD
    ``.mat`` (its ``GTcls.Segmentation``). Raises ValueError naming the file for anything else, and
    :class:`ImageTooLarge` (before decoding) for a file declaring more pixels than :func:`max_image_pixels`."""
    try:
        if path.suffix == ".mat":
            from scipy.io import loadmat

            return np.asarray(loadmat(str(path))["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
        data = path.read_bytes()
        _check_header(path, data, "Label map")
        chunks = png_chunks(data) if data.startswith(PNG_SIGNATURE) and len(data) > 26 else None
        if chunks is not None and data[24] == 8 and data[25] in (0, 3):
            try:  # libspng: 8-bit grayscale, or an 8-bit palette (VOC's) read as grayscale, i.e. its indices
                return pyspng.load(data if data[25] == 0 else _palette_as_grayscale(data, chunks), format="L")
            except Exception:  # pyspng raises a bare Exception: Pillow decodes the file or names the problem
                pass
        with open_checked(path, "Label map") as img:
            img.load()
            if img.mode not in ("P", "L"):
                raise ValueError(f"mode {img.mode!r}; expected a palette ('P') or grayscale ('L') PNG of class "
                                 f"indices, not colours")
            return np.array(img, dtype=np.uint8)
    except ImageTooLarge:
        raise
    except Exception as err:  # PIL, pyspng, scipy (MatReadError on an empty .mat) and struct errors alike
        raise ValueError(f"Cannot read label map {path}: {type(err).__name__}: {err}. Replace or remove the "
                         f"file") from err


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as :func:`decode_image` returns it, from its header (pixels are not decoded);
    :class:`ImageTooLarge` where it declares more pixels than :func:`max_image_pixels`."""
    try:
        with open_checked(path) as img:
            if img.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
                return img.width, img.height
            return img.height, img.width
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Image {path} does not exist; check the path") from err
    except OSError as err:
        raise ValueError(f"Cannot read image {path}: {err}. Replace or remove the file.") from err
