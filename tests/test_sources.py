"""Specification of stages.sources: every source kind, tolerant decoding, color conversion, crop and resize."""

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_idx
from stages.sources import SourceError, _plain_jpeg, describe_source, read_images, resize_square

SIZE = 30


def picture(seed: int, side: int = 64) -> Image.Image:
    """A smooth, image-like RGB picture (not noise), different for each seed."""
    coarse = np.random.default_rng(seed).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode_one(folder: Path, image: Image.Image, fmt: str = "PNG", crop: float = 1.0, **options) -> np.ndarray:
    """Save one image alone in ``folder``, read it back through read_images at SIZE, and return its pixels."""
    folder.mkdir()
    (folder / f"image.{fmt.lower()}").write_bytes(encoded(image, fmt, **options))
    [item] = read_images(folder, SIZE, crop=crop, workers=1)
    assert item.skip_reason is None
    return item.pixels


def by_name(items) -> dict:
    return {item.name: item for item in items}


def assert_all_decoded(items, count: int) -> None:
    assert len(items) == count
    for item in items:
        assert item.skip_reason is None, item
        assert item.pixels.shape == (SIZE, SIZE, 3) and item.pixels.dtype == np.uint8
        assert len(item.content_hash) == 64


# ---------------------------------------------------------------------------------------------- source kinds


def test_folder_is_searched_recursively_in_sorted_order_across_formats(tmp_path):
    formats = {"a.jpg": "JPEG", "b/c.PNG": "PNG", "b/d/e.webp": "WEBP", "f.bmp": "BMP", "g.gif": "GIF",
               "h/i.tiff": "TIFF", "j.JPEG": "JPEG", "k.tif": "TIFF"}
    for index, (name, fmt) in enumerate(formats.items()):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encoded(picture(index), fmt))
    (tmp_path / "notes.txt").write_text("not an image, not counted")

    items = list(read_images(tmp_path, SIZE, workers=2))

    assert [item.name for item in items] == sorted(formats)
    assert_all_decoded(items, len(formats))
    assert items[0].content_hash == hashlib.sha256((tmp_path / "a.jpg").read_bytes()).hexdigest()


def test_zip_is_read_in_memory_and_refuses_zip_slip_members(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("faces/1.png", encoded(picture(1), "PNG"))
        zf.writestr("faces/2.jpg", encoded(picture(2), "JPEG"))
        zf.writestr("readme.md", "ignored")
        zf.writestr("../escape.png", encoded(picture(3), "PNG"))
        zf.writestr("/etc/absolute.png", encoded(picture(4), "PNG"))

    items = by_name(read_images(archive, SIZE, workers=2))

    assert set(items) == {"faces/1.png", "faces/2.jpg", "../escape.png", "/etc/absolute.png"}
    assert_all_decoded([items["faces/1.png"], items["faces/2.jpg"]], 2)
    for unsafe in ("../escape.png", "/etc/absolute.png"):
        assert items[unsafe].pixels is None and "refused" in items[unsafe].skip_reason
    assert list(tmp_path.iterdir()) == [archive]  # nothing unpacked


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_tar_archives_are_streamed(tmp_path, suffix, mode):
    archive = tmp_path / f"set{suffix}"
    with tarfile.open(archive, mode) as tf:
        for index, name in enumerate(["x/1.png", "x/y/2.jpg", "3.webp"]):
            data = encoded(picture(index), {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[name.rsplit(".", 1)[1]])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

    items = list(read_images(archive, SIZE, workers=2))

    assert [item.name for item in items] == ["x/1.png", "x/y/2.jpg", "3.webp"]
    assert_all_decoded(items, 3)


def test_npy_gray_uint8_and_rgb_float_stacks(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    np.save(tmp_path / "rgb.npy", np.random.default_rng(1).random((5, 40, 50, 3), dtype=np.float32))

    gray_items = list(read_images(tmp_path / "gray.npy", SIZE))
    rgb_items = list(read_images(tmp_path / "rgb.npy", SIZE))

    assert_all_decoded(gray_items, 7)
    assert_all_decoded(rgb_items, 5)
    assert gray_items[3].name == "gray.npy[3]"
    assert gray_items[3].content_hash == hashlib.sha256(gray[3].tobytes()).hexdigest()
    assert np.array_equal(gray_items[0].pixels[..., 0], gray_items[0].pixels[..., 2])  # gray stays gray


def test_npz_prefers_the_images_array(tmp_path):
    np.savez(tmp_path / "set.npz", labels=np.arange(4), images=np.zeros((4, 30, 30), np.uint8))

    items = list(read_images(tmp_path / "set.npz", SIZE))

    assert_all_decoded(items, 4)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "train-images.idx3-ubyte"])
def test_idx_files_plain_and_gzipped(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)

    items = list(read_images(tmp_path / name, SIZE))

    assert describe_source(tmp_path / name) == "idx"
    assert_all_decoded(items, 6)
    assert np.array_equal(items[2].pixels, resize_square(images[2], SIZE))


def test_truncated_idx_yields_what_it_has_then_one_skip(tmp_path):
    write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    data = (tmp_path / "x-images-idx3-ubyte").read_bytes()
    (tmp_path / "x-images-idx3-ubyte").write_bytes(data[: 16 + 3 * 28 * 28 + 100])

    items = list(read_images(tmp_path / "x-images-idx3-ubyte", SIZE))

    assert_all_decoded(items[:3], 3)
    assert "2 of 5 items missing" in items[3].skip_reason and len(items) == 4


def test_float_items_outside_unit_range_are_skipped(tmp_path):
    stack = np.zeros((3, 10, 10), np.float32)
    stack[1, 0, 0] = 2.0
    stack[2, 0, 0] = np.nan
    np.save(tmp_path / "floats.npy", stack)

    reasons = [item.skip_reason for item in read_images(tmp_path / "floats.npy", SIZE)]

    assert reasons == [None, "float values outside [0, 1]", "non-finite values"]


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_files_are_skipped_with_a_reason_and_the_rest_still_decode(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    jpeg = encoded(picture(0, side=30), "JPEG")
    files = {
        "0-good.png": encoded(picture(1, side=30), "PNG"),
        "1-empty.jpg": b"",
        "2-truncated.jpg": jpeg[: len(jpeg) // 2],
        "3-text.png": b"this is not a png at all",
        "4-bomb-warning.png": encoded(picture(2, side=40), "PNG"),  # 1,600 pixels: over the limit
        "5-bomb-error.png": encoded(picture(3, side=64), "PNG"),  # 4,096 pixels: over twice the limit
        "6-good.jpg": jpeg,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "7-dangling.jpg").symlink_to(tmp_path / "missing.jpg")

    items = list(read_images(tmp_path, SIZE, workers=2))

    reasons = [item.skip_reason for item in items]
    assert reasons[0] is None and reasons[6] is None
    assert reasons[1] == "empty file"
    assert reasons[2] == "truncated or corrupt image"
    assert reasons[3] == "not an image"
    assert reasons[4] == reasons[5] == "larger than the decompression-bomb limit (1000 pixels)"
    assert reasons[7].startswith("unreadable file")
    assert all(item.pixels is None for item in items[1:6])


@pytest.mark.parametrize(
    "make_source, expected",
    [
        (lambda tmp: tmp / "does-not-exist", "source not found"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no images found"),
        (lambda tmp: (tmp / "table.csv").write_text("a,b") and tmp / "table.csv", "unsupported source"),
    ],
    ids=["missing", "empty-folder", "unsupported"],
)
def test_unusable_sources_raise_before_iteration_naming_the_path(tmp_path, make_source, expected):
    source = make_source(tmp_path)

    with pytest.raises(SourceError) as raised:
        read_images(source, SIZE)  # not iterated: the error comes before the first item

    assert expected in str(raised.value) and str(source) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_archive_without_images_raises(tmp_path):
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:
        zf.writestr("readme.txt", "no images here")

    with pytest.raises(SourceError, match="no images found"):
        read_images(tmp_path / "docs.zip", SIZE)


def test_describe_source_names_each_kind(tmp_path):
    (tmp_path / "a.zip").touch()
    (tmp_path / "a.TGZ").touch()
    (tmp_path / "a.npz").touch()

    kinds = [describe_source(tmp_path / name) for name in ("", "a.zip", "a.TGZ", "a.npz")]

    assert kinds == ["folder", "zip", "tar", "npz"]


def test_two_workers_give_the_same_stream_as_one(tmp_path):
    for index in range(40):
        picture(index).save(tmp_path / f"{index:03d}.jpg")

    one = list(read_images(tmp_path, SIZE, workers=1))
    two = list(read_images(tmp_path, SIZE, workers=2))

    assert [(i.name, i.content_hash) for i in one] == [(i.name, i.content_hash) for i in two]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(one, two))


def test_stopping_early_shuts_the_pool_down(tmp_path):
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        for index in range(300):
            zf.writestr(f"{index:03d}.png", encoded(picture(index % 5, side=16), "PNG"))
    stream = read_images(tmp_path / "many.zip", SIZE, workers=2)

    first = [next(stream) for _ in range(3)]
    stream.close()  # must return, not wait on a blocked feeder

    assert [item.name for item in first] == ["000.png", "001.png", "002.png"]


# ---------------------------------------------------------------------------------------------- color modes


def uniform(mode: str, value, side: int = SIZE) -> Image.Image:
    return Image.new(mode, (side, side), value)


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (uniform("CMYK", (0, 255, 255, 0)), "TIFF", (255, 0, 0)),
        (uniform("RGBA", (200, 0, 0, 0)), "PNG", (255, 255, 255)),  # fully transparent: white, not red
        (uniform("RGBA", (0, 0, 0, 128)), "PNG", (127, 127, 127)),  # half black over white
        (uniform("LA", (0, 0)), "PNG", (255, 255, 255)),
        (uniform("L", 100), "PNG", (100, 100, 100)),
        (uniform("1", 1), "PNG", (255, 255, 255)),
        (uniform("I;16", 65535), "PNG", (255, 255, 255)),  # 16-bit is scaled, not clipped
        (uniform("I;16", 32896), "PNG", (128, 128, 128)),
        (uniform("I", 25700), "TIFF", (100, 100, 100)),
        (uniform("F", 0.5), "TIFF", (128, 128, 128)),
    ],
    ids=["cmyk", "rgba-clear", "rgba-half", "la", "gray", "bilevel", "16bit-max", "16bit-mid", "32bit", "float"],
)
def test_color_modes_convert_to_the_right_rgb(tmp_path, image, fmt, expected):
    pixels = decode_one(tmp_path / "one", image, fmt)

    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_palette_and_palette_transparency(tmp_path):
    palette = uniform("P", 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    transparent = palette.copy()
    transparent.info["transparency"] = 1

    opaque = decode_one(tmp_path / "opaque", palette)
    clear = decode_one(tmp_path / "clear", transparent, transparency=1)

    assert np.all(opaque == (10, 200, 30)) and np.all(clear == 255)


def test_animated_gif_gives_its_first_frame(tmp_path):
    red, blue = uniform("RGB", (255, 0, 0)), uniform("RGB", (0, 0, 255))

    pixels = decode_one(tmp_path / "gif", red, "GIF", save_all=True, append_images=[blue])

    assert np.all(pixels == (255, 0, 0))


# ---------------------------------------------------------------------------------------------- crop and resize


def test_resize_is_antialiased_not_nearest():
    checker = ((np.indices((100, 100)) // 7).sum(axis=0) % 2 * 255).astype(np.uint8)

    small = resize_square(np.stack([checker] * 3, axis=-1), SIZE)

    assert small.shape == (SIZE, SIZE, 3)
    assert np.mean((small > 20) & (small < 235)) > 0.2  # blended edges, which nearest would never produce


def test_resize_matches_pillow_lanczos_on_a_smooth_picture():
    rgb = np.asarray(picture(3, side=97))

    ours = resize_square(rgb, SIZE).astype(int)
    pillow = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.Resampling.LANCZOS)).astype(int)

    assert np.abs(ours - pillow).max() <= 2


def test_large_png_is_box_reduced_first_without_visible_change(tmp_path):
    big = picture(4, side=1000)

    pixels = decode_one(tmp_path / "big", big, "PNG")

    assert np.abs(pixels.astype(int) - resize_square(np.asarray(big), SIZE)).mean() < 1


def test_crop_keeps_the_centre_of_the_centre_square():
    frame = np.full((100, 160, 3), 255, np.uint8)  # wide: the centre square is columns 30..130
    frame[20:80, 50:110] = 0  # a dark object a little larger than the central half of that square

    whole, centre = resize_square(frame, SIZE), resize_square(frame, SIZE, crop=0.5)

    assert centre.max() <= 5
    assert whole[0, 0].min() >= 250 and whole[SIZE // 2, SIZE // 2].max() <= 5


def test_jpeg_draft_decoding_keeps_quality(tmp_path):
    big = picture(7, side=800)

    whole = decode_one(tmp_path / "whole", big, "JPEG", quality=95)  # DCT-downscaled on decode
    centre = decode_one(tmp_path / "centre", big, "JPEG", crop=0.25, quality=95)

    assert np.abs(whole.astype(int) - resize_square(np.asarray(big), SIZE)).mean() < 2
    assert np.abs(centre.astype(int) - resize_square(np.asarray(big), SIZE, crop=0.25)).mean() < 2


# ---------------------------------------------------------------------------------------------- the JPEG fast path


def exif_oriented(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 3 = stored upside down
    return exif.tobytes()


def test_plain_jpegs_take_libjpeg_turbo_and_the_rest_stay_with_pillow():
    plain = encoded(picture(5, side=96), "JPEG", quality=90)
    needed = SIZE

    fast = _plain_jpeg(plain, needed)

    assert fast is not None and min(fast.shape[:2]) >= needed and fast.shape[2] == 3
    assert _plain_jpeg(encoded(picture(5, side=96).convert("L"), "JPEG"), needed) is not None
    assert _plain_jpeg(encoded(picture(5, side=96), "JPEG", exif=exif_oriented(3)), needed) is None
    assert _plain_jpeg(encoded(uniform("CMYK", (0, 255, 255, 0)), "JPEG"), needed) is None
    assert _plain_jpeg(plain[: len(plain) // 2], needed) is None  # truncated: Pillow names the reason
    assert _plain_jpeg(encoded(picture(5, side=96), "PNG"), needed) is None


def test_fast_jpeg_decoding_matches_pillow(tmp_path):
    face = picture(6, side=96)

    ours = decode_one(tmp_path / "plain", face, "JPEG", quality=95)
    pillow = resize_square(np.asarray(Image.open(io.BytesIO(encoded(face, "JPEG", quality=95))).convert("RGB")), SIZE)

    assert np.abs(ours.astype(int) - pillow).mean() < 1.5


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    top_red = np.zeros((64, 64, 3), np.uint8)
    top_red[:32] = (220, 30, 30)
    top_red[32:] = (30, 30, 220)
    stored_upside_down = Image.fromarray(top_red).rotate(180)

    pixels = decode_one(tmp_path / "exif", stored_upside_down, "JPEG", quality=95, exif=exif_oriented(3))

    assert pixels[2, SIZE // 2, 0] > 180 and pixels[-3, SIZE // 2, 2] > 180  # red on top again, blue below


def test_cmyk_jpeg_converts_to_the_right_rgb(tmp_path):
    pixels = decode_one(tmp_path / "cmyk", uniform("CMYK", (0, 255, 255, 0)), "JPEG", quality=95)

    assert np.abs(pixels.astype(int) - (255, 0, 0)).max() <= 3
