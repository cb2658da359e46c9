"""The one definition of gray used everywhere: ITU-R BT.601 luma.

`prepare` makes gray images with it and the colorizer's luma loss compares against it, so a perfect colorizer
has exactly zero luma loss. `luma` works on numpy arrays and torch tensors alike; `luma_of` and `exact_luma` take
(B, 3, H, W) tensors. No torch import here: the functions use their argument's own methods.
"""
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(red, green, blue):
    """Luma of color channels given separately (arrays or tensors of one shape, any scale)."""
    return LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue


def luma_uint8(color, chunk_pixels: int = 65536):
    """(..., 3) uint8 color -> (...) uint8 gray, rounded to nearest.

    Works through the pixels in cache-sized chunks rather than making a float copy of the whole set at once
    (200 MB for 20,000 images); the results are identical."""
    import numpy as np

    pixels = np.ascontiguousarray(color).reshape(-1, 3)
    gray = np.empty(len(pixels), np.uint8)
    for start in range(0, len(pixels), chunk_pixels):
        rgb = pixels[start:start + chunk_pixels].astype(np.float32)
        gray[start:start + chunk_pixels] = np.clip(np.rint(luma(rgb[:, 0], rgb[:, 1], rgb[:, 2])), 0, 255)
    return gray.reshape(np.shape(color)[:-1])


def luma_of(color):
    """(B, 3, H, W) tensor -> (B, 1, H, W) with the shared BT.601 weights."""
    weights = color.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (color * weights).sum(1, keepdim=True)


def exact_luma(color, gray):
    """Shift each pixel's three channels equally so its luma equals `gray` (weights sum to 1), before clipping."""
    return color + (gray - luma_of(color))
