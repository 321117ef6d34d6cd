"""Codecs: how an image file was encoded, and encoding a render the same way.

Previews written by ai-toolkit are JPEG files, while renders are lossless; a render
encoded like its preview (:func:`encode_like`) carries the same compression loss.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parity.compare.metrics import _capped_psnr, ssim
from parity.errors import ImageReadError

# Formats whose decode gives back exactly the pixels that were saved (for 8-bit RGB).
_LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF", "PPM", "TGA", "QOI"})

_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class Codec:
    """How an image file was encoded.

    Attributes
    ----------
    format : str
        Pillow format name: ``"JPEG"``, ``"PNG"``, ``"WEBP"``, ...
    mode : str
        Pillow mode of the stored image (``"RGB"``, ``"L"``, ``"RGBA"``, ...).
    subsampling : str or None
        JPEG only: ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"`` (None for grayscale or an
        unusual layout).
    qtables : tuple of tuple of int, or None
        JPEG only: the file's quantization tables (natural order), reused by
        :func:`encode_like` so the re-encoding quantizes exactly like the file.
    webp_lossless : bool
        WebP only: the frames are stored lossless (``VP8L``), not lossy (``VP8 ``).
    """

    format: str
    mode: str = "RGB"
    subsampling: str | None = None
    qtables: tuple[tuple[int, ...], ...] | None = None
    webp_lossless: bool = False

    @property
    def lossless(self) -> bool:
        """True if decoding gives back the stored pixels exactly (PNG, BMP, TIFF, a
        lossless WebP, ...)."""
        return self.format.upper() in _LOSSLESS_FORMATS or self.webp_lossless


def inspect_codec(path: str | os.PathLike[str]) -> Codec:
    """Read how an image file was encoded.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.

    Returns
    -------
    Codec
        Format, mode and, for JPEG, the quantization tables (``Image.quantization``) and
        the chroma subsampling (``PIL.JpegImagePlugin.get_sampling``).

    Raises
    ------
    ImageReadError
        If the file cannot be opened as an image.
    """
    from PIL import Image, JpegImagePlugin, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            fmt = (im.format or "").upper()
            mode = im.mode
            if fmt == "WEBP":
                return Codec(format=fmt, mode=mode, webp_lossless=webp_lossless(p))
            if fmt != "JPEG":
                return Codec(format=fmt, mode=mode)
            tables = {int(k): list(v) for k, v in getattr(im, "quantization", {}).items()}
            sampling = JpegImagePlugin.get_sampling(im)
    except FileNotFoundError as exc:
        raise ImageReadError(p, "file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(p, "not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(p, f"cannot parse header ({exc})") from exc
    qtables = tuple(tuple(tables[k]) for k in sorted(tables)) or None
    return Codec(
        format="JPEG",
        mode=mode,
        subsampling=_SUBSAMPLING_NAMES.get(sampling),
        qtables=qtables,
    )


def webp_lossless(path: str | os.PathLike[str]) -> bool:
    """Whether a WebP file's frames are stored lossless (``VP8L`` chunks) rather than
    lossy (``VP8 `` chunks): Pillow does not say, the RIFF chunks do."""
    data = Path(path).read_bytes()
    return b"VP8L" in data and b"VP8 " not in data


def encode_like(rgb: np.ndarray, codec: Codec) -> np.ndarray:
    """Encode an image the way a file was encoded, and decode it back.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)``, typically a lossless render.
    codec : Codec
        Target encoding, typically ``inspect_codec(preview_path)``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)`` after the round trip through Pillow. JPEG uses the
        codec's quantization tables when known (else Pillow's default quality, 75) and its
        subsampling; grayscale JPEGs are encoded as grayscale. Lossless formats return an
        unchanged copy. Other formats are saved with Pillow's defaults for that format.
    """
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if codec.lossless:
        return rgb.copy()
    im = Image.fromarray(rgb)
    options: dict[str, Any] = {}
    fmt = codec.format.upper()
    if fmt == "JPEG":
        if codec.mode == "L":
            im = im.convert("L")
        if codec.qtables:
            options["qtables"] = [list(t) for t in codec.qtables]
        if codec.subsampling is not None and im.mode != "L":
            options["subsampling"] = codec.subsampling
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def jpeg_floor(rgb: np.ndarray, codec: Codec) -> dict[str, float]:
    """Scores of an image against its own re-encoding.

    This is what a pixel-exact reproduction scores against a preview that went through
    ``codec``: the best possible result when comparing a lossless render with the preview
    directly, without codec matching.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``uint8`` RGB image ``(H, W, 3)``.
    codec : Codec
        Encoding of the preview.

    Returns
    -------
    dict
        ``{"ssim": float, "psnr": float}``; SSIM in ``[-1, 1]``, PSNR in dB capped at
        :data:`~parity.compare.PSNR_IDENTICAL_DB`. For lossless codecs 1.0 and the cap.
    """
    again = encode_like(rgb, codec)
    return {"ssim": ssim(rgb, again), "psnr": _capped_psnr(rgb, again)}
