"""Images as parity compares them: reading a file's pixels, checking and aligning a pair.

Images are ``uint8`` RGB arrays of shape ``(H, W, 3)`` with values in ``[0, 255]``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from parity.errors import ImageReadError


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file fully and return its pixels as RGB.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (any format Pillow reads).

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``, values in ``[0, 255]``. Alpha is dropped
        and grayscale is replicated to three channels. EXIF orientation is *not* applied:
        the stored pixel grid is returned as written.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, not an image, truncated or otherwise undecodable.
        The whole image is decoded here, so a truncated file fails now rather than later.
    """
    from PIL import Image, ImageFile, UnidentifiedImageError

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageReadError(p, f"cannot access file ({exc.strerror or exc})") from exc
    if not p.is_file():
        raise ImageReadError(p, "not a regular file")
    if size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide flag set elsewhere would silently pad truncated files with grey.
        raise ImageReadError(
            p, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to read partial images"
        )
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError as exc:
        raise ImageReadError(p, f"not a recognised image file ({size} bytes)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(p, f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(p, f"decoding failed, file truncated or corrupt ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"image {name} must have shape (H, W, 3), got {x.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"image {name} must be uint8 in [0, 255], got dtype {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"image {name} is empty, shape {x.shape}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}; use align_sizes() first")
    return a, b


def align_sizes(preview: np.ndarray, render: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bring a render to the preview's size so that the two can be compared.

    Parameters
    ----------
    preview : numpy.ndarray
        ``uint8`` RGB preview, ``(H, W, 3)``; its size is kept.
    render : numpy.ndarray
        ``uint8`` RGB render, ``(H', W', 3)``.

    Returns
    -------
    preview : numpy.ndarray
        Unchanged.
    render : numpy.ndarray
        The render, resized to ``(H, W, 3)`` with Pillow's bicubic filter
        (``Image.Resampling.BICUBIC``) when the sizes differ, else unchanged.
    resized : bool
        True if the render had to be resized. A size mismatch is itself a finding (the
        server snapped or ignored the requested size); the metrics after resizing only say
        how close the content is.
    """
    if preview.shape[:2] == render.shape[:2]:
        return preview, render, False
    from PIL import Image

    height, width = preview.shape[:2]
    resized = Image.fromarray(render).resize((width, height), Image.Resampling.BICUBIC)
    return preview, np.asarray(resized.convert("RGB"), dtype=np.uint8).copy(), True
