"""Specification of what `pipeline prepare` says about duplicates: every dropped copy is listed with the image it
copies, the first 16 are shown beside it in duplicates.png, and distinct simple images (digits) are all kept."""
from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from helpers import cli, decoded_png, latest_entry, read_manifest, shapes_picture, succeeded, write_idx
from test_dedupe import stroke


def rows_of(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_dropped_copies_are_listed_and_shown_beside_their_originals(make_folder, outputs):
    folder = make_folder(10)
    (folder / "copy-of-3.png").write_bytes((folder / "3.png").read_bytes())
    shapes_picture(3).save(folder / "reencoded-3.jpg", quality=70)
    shapes_picture(7).resize((40, 40), Image.Resampling.LANCZOS).save(folder / "smaller-7.png")

    succeeded(cli(outputs, "prepare", "--source", folder, "--count", "all"))
    entry = latest_entry(outputs)

    listed = {row["file"]: row["duplicate_of"] for row in rows_of(entry / "duplicates.csv")}
    assert listed == {"copy-of-3.png": "3.png", "reencoded-3.jpg": "3.png", "smaller-7.png": "7.png"}
    assert read_manifest(entry)["metrics"]["duplicates"] == 3
    grid = np.asarray(decoded_png(entry / "duplicates.png"))
    assert grid.shape == ((30 + 2) * 3 + 2 * 3, (8 * (2 * 30 + 2) + 2) * 3, 3)  # one row of 8 pair slots
    color = np.load(entry / "color.npy")
    first_pair_left = grid[2 * 3:32 * 3:3, 2 * 3:32 * 3:3]  # top-left cell, one sample per scaled-up pixel
    assert np.array_equal(first_pair_left, color[3])  # the kept 3.png, as prepared


def test_a_set_without_copies_lists_none_and_draws_no_grid(make_folder, outputs):
    succeeded(cli(outputs, "prepare", "--source", make_folder(8), "--count", "all"))
    entry = latest_entry(outputs)

    assert rows_of(entry / "duplicates.csv") == []
    assert not (entry / "duplicates.png").exists()


def test_distinct_digit_strokes_in_an_idx_file_are_all_kept(tmp_path, outputs):
    """The MNIST case in miniature: 300 different handwritten-one-like strokes, two of them repeated byte for byte."""
    strokes = np.stack([stroke(seed) for seed in range(300)] + [stroke(10), stroke(20)])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", strokes)

    succeeded(cli(outputs, "prepare", "--source", tmp_path / "t10k-images-idx3-ubyte.gz", "--size", "28",
                  "--count", "all"))
    entry = latest_entry(outputs)

    metrics = read_manifest(entry)["metrics"]
    assert (metrics["read"], metrics["duplicates"], metrics["kept"]) == (302, 2, 300)
    assert {row["duplicate_of"] for row in rows_of(entry / "duplicates.csv")} == {
        "t10k-images-idx3-ubyte.gz[10]", "t10k-images-idx3-ubyte.gz[20]"}
