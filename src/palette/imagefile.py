"""Image files at full precision: 8- and 16-bit PNG, TIFF and everything Pillow reads.

Pillow reads a 16-bit colour PNG or TIFF as 8 bits per channel, so those go elsewhere: TIFF through tifffile (which
ships with scikit-image), and PNG with 16-bit samples through the small codec below (zlib and numpy, PNG spec 1.2,
non-interlaced). A file decodes to a float tensor (C, H, W) in [0, 1] with C = 1 or 3; transparency is composited
onto white.

Every reader checks the size a file's header claims against one pixel limit (:func:`check_pixels`, default
:data:`DEFAULT_MAX_PIXELS`) before it decodes anything: a few hundred bytes of PNG can claim 12000x12000 pixels and
take gigabytes to decode (docs/limits.md).
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import PaletteError

# 64 million pixels (8000x8000): above the 61 MP of the largest common camera sensors, and about 5 GB at most to
# sample (a 196 MP 16-bit PNG made `palette sample` peak at 15.3 GB)
DEFAULT_MAX_PIXELS = 64_000_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (palette images stay with Pillow)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F", *_SIXTEEN_BIT_MODES)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int  # 1 (gray) or 3 (colour), transparency not counted
    bits: int  # 8, or 16 for 16-bit samples


_RAISE_THE_LIMIT = ("if the file is trusted, raise the limit (--max-pixels; data.max_pixels for training; "
                    "max_pixels= in the Python API)")


class PixelLimitError(PaletteError):
    """An image whose header claims more pixels than the pixel limit (refused before decoding)."""


def check_pixels(name: str | Path, width: int, height: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Refuse an image of ``width`` x ``height`` above ``max_pixels`` (None: no limit of palette's own; Pillow still
    refuses what it decodes above twice ``PIL.Image.MAX_IMAGE_PIXELS``), naming it by ``name``."""
    if max_pixels is not None and width * height > max_pixels:
        raise PixelLimitError(f"{name} is {width}x{height} ({width * height:,} pixels), above the pixel limit of "
                              f"{max_pixels:,}: {_RAISE_THE_LIMIT}")


def _open_pil(path: Path, max_pixels: int | None) -> Image.Image:
    """``Image.open`` with palette's pixel limit in place of Pillow's own (a warning above 89 MP, an error above
    179 MP)."""
    if max_pixels is not None and max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
        Image.MAX_IMAGE_PIXELS = max_pixels  # only ever raised, when a user raises palette's limit above Pillow's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with the file's name
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as err:  # above twice Pillow's limit: it refuses before telling the size
            claimed = re.search(r"\((\d+) pixels\)", str(err))
            count = f"{int(claimed[1]):,}" if claimed else "too many"
            limit = f"the pixel limit of {max_pixels:,}" if max_pixels is not None else "Pillow's own limit"
            raise PixelLimitError(f"{path} has {count} pixels, above {limit}: {_RAISE_THE_LIMIT}") from None
    try:
        check_pixels(path, *img.size, max_pixels)
    except PixelLimitError:
        img.close()
        raise
    return img


def _is_tiff(path: Path) -> bool:
    return Path(path).suffix.lower() in (".tif", ".tiff")


def _png_header(path: Path) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) of a PNG file, or None for another format."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, colour, interlace


def probe(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Size, channels and bit depth from the file's header (raises OSError/ValueError for what is not an image, and
    :class:`PixelLimitError` for an image above ``max_pixels``)."""
    path = Path(path)
    png = _png_header(path)
    if png is not None:
        width, height, depth, colour, _ = png
        check_pixels(path, width, height, max_pixels)
        return ImageInfo(width, height, 1 if colour in (0, 4) else 3, 16 if depth == 16 else 8)
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                samples = page.samplesperpixel - (1 if page.extrasamples else 0)
                check_pixels(path, page.imagewidth, page.imagelength, max_pixels)
                return ImageInfo(page.imagewidth, page.imagelength, 1 if samples == 1 else 3,
                                 16 if page.bitspersample > 8 else 8)
        except (tifffile.TiffFileError, IndexError, ValueError):
            pass  # not a TIFF that tifffile reads: Pillow may
    with _open_pil(path, max_pixels) as img:
        w, h = img.size
        return ImageInfo(w, h, 1 if img.mode in _GRAY_MODES else 3, 16 if img.mode in _SIXTEEN_BIT_MODES else 8)


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode an image file into a float tensor (C, H, W) in [0, 1], C = 1 or 3, without losing precision.

    The header is checked against ``max_pixels`` first (:class:`PixelLimitError`)."""
    path = Path(path)
    probe(path, max_pixels)
    png = _png_header(path)
    if png is not None and png[2] == 16 and png[3] != 0:  # 16-bit colour or gray+alpha: Pillow would drop bits
        return array_to_tensor(read_png16(path, max_pixels))
    if _is_tiff(path):
        import tifffile

        try:
            return array_to_tensor(tifffile.imread(path, key=0))
        except (tifffile.TiffFileError, ValueError, NotImplementedError, KeyError):
            pass  # a compression tifffile cannot decode alone: Pillow may
    with _open_pil(path, max_pixels) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
    return pil_to_tensor(img)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image as a float tensor (C, H, W) in [0, 1], C = 1 or 3, keeping 16-bit gray precision."""
    if img.mode in (*_SIXTEEN_BIT_MODES, "I"):
        array = np.asarray(img).astype(np.float32)
        array = array / (65535.0 if array.max(initial=0) > 255 or img.mode != "I" else 255.0)
        return torch.from_numpy(np.ascontiguousarray(np.clip(array, 0, 1)[None]))
    if img.mode == "F":
        return torch.from_numpy(np.ascontiguousarray(np.clip(np.asarray(img, dtype=np.float32), 0, 1)[None]))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA" if img.mode not in ("LA", "La") else "LA")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    array = np.asarray(img)
    return array_to_tensor(array)


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """An (H, W), (H, W, C) or planar (C, H, W) array of uint8, uint16 or floats in [0, 1] as (C, H, W) in [0, 1].

    C = 2 or 4 is gray or colour with alpha, composited onto white.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[2] not in (1, 2, 3, 4):
        array = array.transpose(1, 2, 0)  # planar TIFF
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"an image must have 1 to 4 channels, got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535
    elif np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.float32) / (65535 if array.max(initial=0) > 255 else 255)
    else:
        values = array.astype(np.float32)
    values = np.clip(values, 0, 1)
    if values.shape[2] in (2, 4):
        alpha = values[:, :, -1:]
        values = values[:, :, :-1] * alpha + (1 - alpha)
    return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))


# ---- PNG with 16-bit samples -------------------------------------------------------------------------------------


def _chunks(data: bytes):
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        yield kind, data[position + 8 : position + 8 + length]
        position += 12 + length


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _unfilter(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the per-row PNG filters (None, Sub, Up, Average, Paeth) of (H, 1 + stride) bytes."""
    height, stride = raw.shape[0], raw.shape[1] - 1
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for r in range(height):
        kind, line = int(raw[r, 0]), raw[r, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: a running sum of each byte lane, modulo 256
            row = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint64).astype(np.uint8).reshape(-1)
        elif kind == 2:
            row = line + previous
        elif kind in (3, 4):  # each byte depends on the one bpp before it: one pass in Python
            values, above = line.tolist(), previous.tolist()
            for i in range(stride):
                left = values[i - bpp] if i >= bpp else 0
                if kind == 3:
                    predicted = (left + above[i]) >> 1
                else:
                    predicted = _paeth(left, above[i], above[i - bpp] if i >= bpp else 0)
                values[i] = (values[i] + predicted) & 0xFF
            row = np.array(values, dtype=np.uint8)
        else:
            raise ValueError(f"unknown PNG filter type {kind} in row {r}")
        out[r] = row
        previous = row
    return out


def read_png16(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A non-interlaced PNG with 16-bit samples as a uint16 array (H, W) or (H, W, C)."""
    header = _png_header(Path(path))
    if header is None:
        raise ValueError(f"{path} is not a PNG file")
    width, height, depth, colour, interlace = header
    check_pixels(path, width, height, max_pixels)
    data = Path(path).read_bytes()
    if depth != 16 or colour not in _PNG_CHANNELS:
        raise ValueError(f"{path}: read_png16 reads 16-bit gray or colour PNGs, not bit depth {depth}, colour type {colour}")
    if interlace:
        raise ValueError(f"{path}: interlaced 16-bit PNG files are not supported; save it without interlacing")
    samples = _PNG_CHANNELS[colour]
    stride = width * samples * 2
    try:  # never more than the header's size: a small file can inflate to gigabytes
        pixels = zlib.decompressobj().decompress(b"".join(body for kind, body in _chunks(data) if kind == b"IDAT"),
                                                 height * (stride + 1))
    except zlib.error as err:
        raise ValueError(f"{path}: the PNG image data is damaged ({err})") from None
    if len(pixels) < height * (stride + 1):
        raise ValueError(f"{path}: the PNG image data is truncated")
    raw = np.frombuffer(pixels, dtype=np.uint8)[: height * (stride + 1)].reshape(height, stride + 1)
    array = _unfilter(raw, samples * 2).view(">u2").astype(np.uint16).reshape(height, width, samples)
    return array[:, :, 0] if samples == 1 else array


def write_png16(path: str | Path, array: np.ndarray) -> None:
    """Write a uint16 array (H, W) or (H, W, 3) as a 16-bit gray or RGB PNG (rows unfiltered, zlib level 6)."""
    array = np.asarray(array)
    if array.dtype != np.uint16 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ValueError(f"write_png16 takes a uint16 array (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    height, width = array.shape[:2]
    colour = 0 if array.ndim == 2 else 2
    rows = array.astype(">u2").reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    Path(path).write_bytes(
        PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (C, H, W) image in [-1, 1] as an 8-bit PIL image (L for one channel, RGB for three)."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(array[0]) if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))


def save_image(image: torch.Tensor, path: str | Path, bits: int = 8) -> None:
    """Write a (C, H, W) image in [-1, 1] as PNG (8 bits: any format Pillow writes), 8 or 16 bits per channel."""
    if bits == 16:
        scaled = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 32767.5).round().to(torch.int32)
        write_png16(path, scaled.numpy().astype(np.uint16).transpose(1, 2, 0))
    else:
        to_pil(image).save(path)
