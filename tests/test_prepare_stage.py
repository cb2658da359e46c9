"""Specification of `pipeline prepare`'s results: the arrays, the split, sources, labels, preview, dedupe, counts."""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import cli, latest_entry, read_manifest, shapes_picture, succeeded
from stages.faces import FACTORS
from stages.luma import luma_uint8


def prepare(outputs: Path, *args) -> tuple[str, Path]:
    """Run `pipeline prepare ARGS` into `outputs`; return its combined output and the entry it used."""
    return succeeded(cli(outputs, "prepare", *args)).output, latest_entry(outputs)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def independent_luma(color: np.ndarray) -> np.ndarray:
    rgb = color.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def split_of(entry: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(entry / "split.npz") as split:
        return split["train"], split["test"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> tuple[str, Path]:
    """The embedded default, 40 faces, seed 0, shared by the read-only tests below."""
    return prepare(tmp_path_factory.mktemp("embedded") / "outputs", "--count", "40")


# ----- what the embedded default writes ------------------------------------------------------------------------------


def test_embedded_default_writes_gray_color_split_sources_labels_and_preview(embedded):
    _, entry = embedded

    gray, color = np.load(entry / "gray.npy"), np.load(entry / "color.npy")

    assert (gray.shape, gray.dtype) == ((40, 30, 30), np.uint8)
    assert (color.shape, color.dtype) == ((40, 30, 30, 3), np.uint8)
    assert color.std() > 10, "the faces are not blank"
    train, test = split_of(entry)
    assert len(train) + len(test) == 40
    assert len(read_csv(entry / "sources.csv")) == 40
    assert len(read_csv(entry / "labels.csv")) == 40
    with Image.open(entry / "preview.png") as preview:
        pixels = np.asarray(preview.convert("RGB"))
    first_gray, first_color = pixels[6:96:3, 6:96:3], pixels[6:96:3, 96:186:3]  # 3x scale, 2-pixel gutters
    assert (first_gray == gray[0][..., None]).all() and (first_color == color[0]).all()
    assert pixels.shape == (3 * (4 * 32 + 2), 3 * (8 * 62 + 2), 3), "32 pairs, 8 a row"
    assert not list(entry.glob(".*spool")), "the scratch spools are deleted, never published"


def test_gray_is_the_luma_of_color_rounded_to_nearest_for_every_pixel(embedded):
    _, entry = embedded
    gray, color = np.load(entry / "gray.npy"), np.load(entry / "color.npy")

    difference = np.abs(gray.astype(np.float64) - independent_luma(color))

    assert difference.max() <= 0.5 + 1e-3  # float32 arithmetic may land a hair past a rounding midpoint


def test_luma_is_the_same_whatever_chunks_the_pixels_go_through():
    color = np.random.default_rng(0).integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)

    whole, in_threes = luma_uint8(color), luma_uint8(color, chunk_pixels=3)

    assert whole.shape == (7, 5, 5) and np.array_equal(whole, in_threes)
    assert np.abs(whole - independent_luma(color)).max() <= 0.5 + 1e-3


def test_split_train_and_test_are_disjoint_and_cover_every_index(embedded):
    _, entry = embedded

    train, test = split_of(entry)

    assert train.dtype.kind == "i" and test.dtype.kind == "i"
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(40))
    assert len(test) == round(40 * 0.1)


@pytest.mark.parametrize("count, fraction", [(35, 0.1), (25, 0.3), (40, 0.33)])  # 3.5 -> 4, 7.5 -> 8, 13.2 -> 13
def test_test_split_holds_out_the_rounded_fraction(tmp_path, count, fraction):
    output, entry = prepare(tmp_path / "outputs", "--count", count, "--test-fraction", fraction)

    train, test = split_of(entry)

    assert len(test) == round(count * fraction)
    assert sorted([*train.tolist(), *test.tolist()]) == list(range(count))
    assert f"({count - len(test)} train / {len(test)} test)" in output


def test_same_seed_gives_the_same_set_and_split_and_another_seed_a_different_split(embedded, tmp_path):
    _, seed_0 = embedded

    _, again = prepare(tmp_path / "again", "--count", "40", "--seed", "0")
    _, seed_1 = prepare(tmp_path / "other", "--count", "40", "--seed", "1")

    assert np.array_equal(split_of(again)[0], split_of(seed_0)[0])
    assert np.array_equal(split_of(again)[1], split_of(seed_0)[1])
    assert np.array_equal(np.load(again / "color.npy"), np.load(seed_0 / "color.npy"))
    assert not np.array_equal(split_of(seed_1)[1], split_of(seed_0)[1])


def test_embedded_labels_have_one_column_per_face_factor(embedded):
    _, entry = embedded

    rows = read_csv(entry / "labels.csv")
    sources = read_csv(entry / "sources.csv")

    assert {"hair", "direction", "eyes", "skin", "background"} <= set(rows[0])
    assert set(rows[0]) == {"file", *FACTORS}
    assert [row["file"] for row in rows] == [row["file"] for row in sources]
    for row in rows:
        for factor, values in FACTORS.items():
            assert row[factor] in values
    assert len({row["hair"] for row in rows}) > 1
    assert read_manifest(entry)["metrics"]["labelled"] == 40


def test_manifest_and_summary_line_report_the_counts(embedded):
    output, entry = embedded

    metrics = read_manifest(entry)["metrics"]

    assert {k: metrics[k] for k in ("read", "skipped", "duplicates", "kept", "train", "test")} == \
        {"read": 40, "skipped": 0, "duplicates": 0, "kept": 40, "train": 36, "test": 4}
    assert "40 read, 0 skipped, 0 duplicates dropped, 40 kept (36 train / 4 test)" in output


# ----- a folder of images --------------------------------------------------------------------------------------------


def test_sources_csv_names_each_kept_file_with_the_sha256_of_its_bytes(make_folder, outputs):
    folder = make_folder(8)
    _, entry = prepare(outputs, "--source", folder, "--count", "6", "--no-dedupe")

    rows = read_csv(entry / "sources.csv")

    assert [row["index"] for row in rows] == [str(i) for i in range(6)]
    assert len({row["file"] for row in rows}) == 6
    for row in rows:
        assert row["content_hash"] == hashlib.sha256((folder / row["file"]).read_bytes()).hexdigest()


def test_arrays_are_in_the_order_of_sources_csv(tmp_path, outputs):
    folder = tmp_path / "solid"
    folder.mkdir()
    colors = {f"{i}.png": (20 * i, 250 - 20 * i, 60 + 10 * i) for i in range(8)}
    for name, color in colors.items():
        Image.new("RGB", (40, 40), color).save(folder / name)

    _, entry = prepare(outputs, "--source", folder, "--count", "5", "--no-dedupe", "--seed", "4")

    color = np.load(entry / "color.npy")
    for row in read_csv(entry / "sources.csv"):
        assert np.all(color[int(row["index"])] == colors[row["file"]]), row["file"]


def test_count_below_the_usable_images_keeps_a_seeded_subset(make_folder, tmp_path):
    folder = make_folder(10)

    _, first = prepare(tmp_path / "a", "--source", folder, "--count", "5", "--seed", "2")
    _, again = prepare(tmp_path / "b", "--source", folder, "--count", "5", "--seed", "2")

    names = [row["file"] for row in read_csv(first / "sources.csv")]
    assert len(set(names)) == 5 and set(names) <= {f"{i}.png" for i in range(10)}
    assert names == [row["file"] for row in read_csv(again / "sources.csv")]


def test_count_all_keeps_every_usable_image(make_folder, outputs):
    folder = make_folder(12)
    (folder / "empty.png").write_bytes(b"")

    output, entry = prepare(outputs, "--source", folder, "--count", "all")

    assert np.load(entry / "gray.npy").shape == (12, 30, 30)
    assert {row["file"] for row in read_csv(entry / "sources.csv")} == {f"{i}.png" for i in range(12)}
    assert read_manifest(entry)["metrics"]["kept"] == 12
    assert "12 kept" in output


def test_labels_csv_carries_the_tags_of_kept_images_named_under_another_leading_folder(make_folder, tmp_path, outputs):
    folder = make_folder(8, name="data/faces")
    tags = tmp_path / "tags.csv"
    expected = {f"{i}.png": {"hair": f"color{i}", "smiling": str(i % 2)} for i in range(7)}  # 7.png has no row
    with open(tags, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "hair", "smiling"])
        writer.writerows([f"faces/{name}", t["hair"], t["smiling"]] for name, t in expected.items())

    _, entry = prepare(outputs, "--source", folder, "--labels", tags, "--count", "6", "--seed", "1")

    kept = [row["file"] for row in read_csv(entry / "sources.csv")]
    rows = read_csv(entry / "labels.csv")
    assert [row["file"] for row in rows] == kept
    for row in rows:
        untagged = {"hair": "", "smiling": ""}
        assert {"hair": row["hair"], "smiling": row["smiling"]} == expected.get(row["file"], untagged)
    metrics = read_manifest(entry)["metrics"]
    assert metrics["labelled"] == sum(name in expected for name in kept) >= 5
    assert metrics["label_columns"] == ["hair", "smiling"]


def test_centre_crop_keeps_the_central_fraction(tmp_path):
    folder = tmp_path / "framed"
    folder.mkdir()
    for i, centre in enumerate([(220, 30, 30), (30, 200, 40), (240, 220, 20)]):
        picture = Image.new("RGB", (60, 60), (20, 40, 200))
        picture.paste(centre, (15, 15, 45, 45))  # the central half is one color, the frame blue
        picture.save(folder / f"{i}.png")

    output, cropped = prepare(tmp_path / "a", "--source", folder, "--count", "all", "--crop", "center:0.5",
                              "--no-dedupe")
    _, whole = prepare(tmp_path / "b", "--source", folder, "--count", "all", "--no-dedupe")

    color = np.load(cropped / "color.npy").astype(int)
    assert np.abs(color - np.array([(220, 30, 30), (30, 200, 40), (240, 220, 20)])[:, None, None]).max() <= 2
    assert np.abs(np.load(whole / "color.npy")[:, 0, 0].astype(int) - (20, 40, 200)).max() <= 2
    assert cropped.name.startswith("framed-nall-s30-c0.5-") and whole.name.startswith("framed-nall-s30-")
    assert cropped.name[len("framed-nall-s30-c0.5-"):] != whole.name[len("framed-nall-s30-"):]


# ----- duplicates ----------------------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_copies(make_folder):
    """10 distinct PNGs plus an exact copy and a JPEG (quality 70) re-encode of 3.png, named to sort after it."""
    folder = make_folder(10)
    (folder / "copy-of-3.png").write_bytes((folder / "3.png").read_bytes())
    shapes_picture(3).save(folder / "reencoded-3.jpg", quality=70)
    return folder


def test_exact_and_reencoded_copies_are_dropped_as_duplicates(folder_with_copies, outputs):
    output, entry = prepare(outputs, "--source", folder_with_copies, "--count", "all")

    metrics = read_manifest(entry)["metrics"]
    names = {row["file"] for row in read_csv(entry / "sources.csv")}

    assert metrics["duplicates"] == 2
    assert metrics["kept"] == 10 and metrics["read"] == 12
    assert names == {f"{i}.png" for i in range(10)}
    assert "2 duplicates dropped, 10 kept" in output


def test_no_dedupe_keeps_the_copies(folder_with_copies, outputs):
    _, entry = prepare(outputs, "--source", folder_with_copies, "--count", "all", "--no-dedupe")

    metrics = read_manifest(entry)["metrics"]

    assert metrics["duplicates"] == 0
    assert metrics["kept"] == 12
    assert {"copy-of-3.png", "reencoded-3.jpg"} <= {row["file"] for row in read_csv(entry / "sources.csv")}


# ----- bad files -----------------------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_bad_files(make_folder):
    """10 good PNGs, a zero-byte file, a truncated JPEG and a text file named .png."""
    folder = make_folder(10)
    (folder / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    shapes_picture(50).save(buffer, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.png").write_text("these are my notes, not a picture\n")
    return folder


BAD_FILES = ("empty.png", "truncated.jpg", "notes.png")


def test_bad_files_are_skipped_with_one_warning_line_each_and_the_run_succeeds(folder_with_bad_files, outputs):
    output, entry = prepare(outputs, "--source", folder_with_bad_files, "--count", "8")

    warnings = [line for line in output.splitlines() if line.startswith("warning")]

    assert len(warnings) == 3, output
    for name in BAD_FILES:
        assert sum(name in line for line in warnings) == 1, (name, warnings)
    assert "Traceback" not in output
    assert np.load(entry / "gray.npy").shape == (8, 30, 30)
    assert not {row["file"] for row in read_csv(entry / "sources.csv")} & set(BAD_FILES)


def test_manifest_and_summary_count_read_skipped_with_reasons_duplicates_and_kept(folder_with_bad_files, outputs):
    output, entry = prepare(outputs, "--source", folder_with_bad_files, "--count", "8")

    metrics = read_manifest(entry)["metrics"]

    assert (metrics["read"], metrics["skipped"], metrics["duplicates"], metrics["kept"]) == (13, 3, 0, 8)
    assert sum(metrics["skipped_by_reason"].values()) == 3
    assert all(reason for reason in metrics["skipped_by_reason"])
    assert (metrics["train"], metrics["test"]) == (7, 1)
    assert "13 read, 3 skipped, 0 duplicates dropped, 8 kept (7 train / 1 test)" in output
