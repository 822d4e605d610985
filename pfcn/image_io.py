"""Reading images the way every pfcn tool needs them: 8-bit RGB, upright, whatever the file holds.

Photos arrive as grayscale, palette, RGBA, 16-bit PNG or with an EXIF orientation tag. The model wants 3-channel 8-bit
pixels in the orientation a viewer shows, so every reader in pfcn (predict, eval, datasets, calibration) goes through
`read_image`; a file that cannot be decoded raises `ImageReadError` naming it.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image file is missing, unreadable or of an unsupported kind."""


def _to_uint8(array: np.ndarray, maxval: int | None = None) -> np.ndarray:
    """Scale integer or float pixel data of any depth to 0..255 (integers: 0..maxval, guessed when None)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if maxval is None:
            # 32-bit "I" mode says nothing about the range: 16-bit data unless every value fits 8 bits.
            maxval = 65535 if array.max(initial=0) > 255 else 255
        return np.clip(np.round(array.astype(np.float64) * 255.0 / maxval), 0, 255).astype(np.uint8)
    finite = np.nan_to_num(array.astype(np.float64))
    hi = 1.0 if finite.max(initial=0) <= 1.0 else 255.0
    return np.clip(np.round(finite * 255.0 / hi), 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image (any mode) to an upright HxWx3 uint8 RGB array."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # A 16-bit mode is 16-bit whatever its content: a dark 16-bit image must stay dark.
        gray = _to_uint8(np.asarray(img), 65535 if mode.startswith("I;16") else None)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Drop alpha the way detectron2's reader does (convert to RGB), without blending.
        img = img.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an upright HxWx3 uint8 RGB array.

    Raises:
        ImageReadError: the file does not exist or cannot be decoded; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        # PIL repeats the file name ("cannot identify image file '...'"): the message names it once, first.
        reason = str(e).replace(f" {str(path)!r}", "").replace(str(path), "the file").strip() or type(e).__name__
        raise ImageReadError(f"{path}: cannot decode image ({reason})") from e


def _images_in(folder: Path) -> list[Path]:
    return sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files, folders (non-recursive, sorted) and glob patterns into a list of image paths.

    A pattern (``imgs/*.jpg``, ``data/**/*.png``; quoted so that the shell passes it on) expands like a folder: the
    image files it matches, sorted, and the images inside the folders it matches. A path that does not exist, or a
    pattern that matches no image, raises FileNotFoundError naming it.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(_images_in(p))
        elif p.exists():
            out.append(p)
        elif any(c in str(item) for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            found = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            for m in matches:
                if m.is_dir():
                    found.extend(_images_in(m))
            if not found:
                what = (f"matches {len(matches)} path(s) but no image file ({', '.join(IMAGE_SUFFIXES)})"
                        if matches else "matches no file")
                raise FileNotFoundError(f"{item}: the pattern {what}")
            out.extend(found)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out
