"""Videos as parity compares them: a clip is its frames and how long each one shows.

A video preview is an animated WebP (ai-toolkit writes one for a sample of more than one
frame, the server returns one for every video model); a still image is a clip of one
frame with no duration. Frames are ``uint8`` RGB arrays ``(H, W, 3)``, in play order.

Both writers turn a frame rate into a frame duration the same way, ``1000 // fps``
milliseconds (:func:`frame_ms`), so two clips play alike exactly when their durations
are equal; that is what a frame-rate difference is judged by.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parity.compare.codec import Codec, encode_like
from parity.errors import ImageReadError

#: The quality of a lossy WebP when the file does not record it (WebP never does):
#: Pillow's default, which ai-toolkit's animated previews (``quality=80``), its one-frame
#: previews and the server's videos all use.
WEBP_QUALITY = 80


@dataclass(frozen=True)
class Clip:
    """The frames of an image or video file.

    Attributes
    ----------
    frames : tuple of numpy.ndarray
        ``uint8`` RGB ``(H, W, 3)`` each, in play order (one for a still image).
    frame_ms : int or None
        How long each frame shows, ms (an animated file's first frame's duration); None
        for a still image.
    """

    frames: tuple[np.ndarray, ...]
    frame_ms: int | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def animated(self) -> bool:
        return self.frame_ms is not None


def frame_ms(fps: int | None) -> int | None:
    """The frame duration, ms, that a video written at ``fps`` frames per second carries:
    ``1000 // fps`` (ai-toolkit's ``save_image``; the server's ``int(1000 / fps)`` is the
    same for whole rates); None for a still image."""
    return None if fps is None else 1000 // int(fps)


def load_clip(path: str | os.PathLike[str]) -> Clip:
    """Read every frame of an image or animated image file.

    Parameters
    ----------
    path : str or os.PathLike
        A still image (JPEG, PNG, WebP...) or an animated WebP or GIF.

    Returns
    -------
    Clip
        The frames composited as a player shows them, RGB (alpha dropped), and for an
        animated file of more than one frame the first frame's duration.

    Raises
    ------
    ImageReadError
        The file is missing, empty, not an image, or a frame cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    from parity.compare.images import load_rgb

    p = Path(path)
    first = load_rgb(p)  # every check of a still image, and its first frame
    try:
        with Image.open(p) as im:
            if int(getattr(im, "n_frames", 1)) <= 1:
                return Clip((first,))
            return _decode(im)
    except UnidentifiedImageError as exc:
        raise ImageReadError(p, "not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(
            p, f"a frame cannot be decoded, file truncated or corrupt ({exc})"
        ) from exc


def _decode(im: Any) -> Clip:
    """Every frame of an open image, as a player composites them."""
    count = int(getattr(im, "n_frames", 1))
    frames = []
    duration = None
    for i in range(count):
        im.seek(i)
        im.load()  # a frame's duration is known once it is decoded
        if i == 0 and count > 1:
            duration = int(im.info.get("duration") or 0)
        frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
    return Clip(tuple(frames), duration)


def encode_frames_like(
    frames: Sequence[np.ndarray], codec: Codec, frame_duration: int | None = None
) -> list[np.ndarray]:
    """Encode frames the way a file was encoded, and decode them back.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        ``uint8`` RGB frames ``(H, W, 3)``, typically a lossless render.
    codec : Codec
        The target file's encoding (:func:`~parity.compare.inspect_codec`).
    frame_duration : int, optional
        ms per frame, for an animated WebP.

    Returns
    -------
    list of numpy.ndarray
        The frames after the round trip. A lossy WebP of more than one frame is encoded
        as one animated file at :data:`WEBP_QUALITY` (its encoder shares state between
        frames, so frame-by-frame encoding would not match), a still one as a still; a
        JPEG frame by frame (:func:`~parity.compare.encode_like`); lossless formats
        unchanged.
    """
    if codec.lossless or not frames:
        return [np.asarray(f).copy() for f in frames]
    if codec.format.upper() != "WEBP":
        return [encode_like(np.asarray(f), codec) for f in frames]
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    return list(load_clip_bytes(encode_clip(frames, frame_duration, lossless=False)).frames)


def load_clip_bytes(data: bytes) -> Clip:
    """:func:`load_clip` of an in-memory file (one parity just encoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return _decode(im)


def encode_clip(frames: Sequence[Any], frame_duration: int | None, *, lossless: bool) -> bytes:
    """Frames (PIL images or ``uint8`` RGB arrays) as WebP bytes: animated, looping, at
    ``frame_duration`` ms a frame, when there is more than one; ``lossless`` keeps every
    pixel (parity's own renders), else :data:`WEBP_QUALITY`."""
    from PIL import Image

    images = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f)) for f in frames]
    options: dict[str, Any] = {"format": "WEBP"}
    options.update({"lossless": True} if lossless else {"quality": WEBP_QUALITY})
    if len(images) > 1:
        options.update(
            save_all=True, append_images=images[1:], duration=frame_duration or 0, loop=0
        )
    buffer = io.BytesIO()
    images[0].convert("RGB").save(buffer, **options)
    return buffer.getvalue()
