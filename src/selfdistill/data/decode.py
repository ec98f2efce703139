"""One image file's bytes to ``size`` x ``size`` RGB pixels, with Pillow (``pip install 'selfdistill[images]'``).

Every mode Pillow opens is converted to RGB: grey and palette images are repeated over the channels, CMYK
JPEGs converted, an alpha channel dropped (as torchvision's ``ImageFolder`` does), and 16-bit grey (PNG,
TIFF) scaled to 8 bits rather than clipped to white. The image is then resized to ``size`` x ``size``
(bilinear, antialiased) once, at load time; the DLB and LightSKD recipes train Tiny-ImageNet at 32 x 32.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import torch
from tqdm import tqdm

from ..errors import UserError, one_line

SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def pillow() -> Any:
    """Pillow's ``Image`` module, or a one-line error saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image-folder datasets need Pillow: pip install 'selfdistill[images]'") from None
    return Image


def decode_image(image_module: Any, handle: BinaryIO, size: int, where: str) -> torch.Tensor:
    """The (3, size, size) uint8 pixels of the image read from ``handle``; ``where`` names it in errors.

    Pillow's plugins fail on a malformed file with many exception classes (``OSError``,
    ``UnidentifiedImageError``, ``SyntaxError``, ``ValueError``, ``struct.error``, and
    ``DecompressionBombError`` for an image with too many pixels), so any of them means "cannot be decoded".
    """
    try:
        with image_module.open(handle) as img:
            if img.mode in SIXTEEN_BIT:
                img = img.convert("I").point(lambda v: v / 256).convert("L")
            raw = img.convert("RGB").resize((size, size), image_module.BILINEAR).tobytes()
    except Exception as exc:
        raise UserError(f"image {where} cannot be decoded ({type(exc).__name__}: {one_line(exc)[:160]})") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)


def progress(total: int, what: str) -> tqdm:
    """A progress bar over ``total`` images, shown on a terminal only."""
    return tqdm(total=total, desc=f"decoding {what}", unit="img", leave=False, disable=not os.isatty(2))
