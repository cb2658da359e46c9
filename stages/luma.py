"""The one definition of gray used everywhere: ITU-R BT.601 luma.

`prepare` makes gray images with it and the colorizer's luma loss compares against it, so a perfect colorizer
has exactly zero luma loss. Works on numpy arrays and torch tensors alike.
"""
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(red, green, blue):
    """Luma of colour channels given separately (arrays or tensors of one shape, any scale)."""
    return LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue


def luma_uint8(color):
    """(..., 3) uint8 colour -> (...) uint8 gray, rounded to nearest."""
    import numpy as np

    rgb = color.astype(np.float32)
    return np.clip(np.rint(luma(rgb[..., 0], rgb[..., 1], rgb[..., 2])), 0, 255).astype(np.uint8)
