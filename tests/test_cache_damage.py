"""Specification of damaged cache entries: a manifest that does not validate, or a file whose bytes no longer match
the content hash recorded when it was published, is never trusted; the entry is recomputed with a one-line reason,
and `pipeline status --verify` finds every such entry."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_one_clear_error_line, cli, latest_entry, read_manifest, replace_stage_entry, succeeded
from stages import registry

PREPARE = ("prepare", "--count", "20")


def damage_manifest(entry: Path, **fields) -> None:
    manifest = read_manifest(entry)
    manifest.update(fields)
    (entry / "manifest.json").write_text(json.dumps(manifest))


def zero_file(path: Path) -> None:
    """Overwrite every byte with zeros: the size stays, the content does not."""
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize("files", [[], None, "color.npy", {"color.npy": "big"}], ids=["list", "null", "str", "size"])
def test_a_manifest_that_does_not_validate_is_recomputed_saying_so(pipeline, outputs, files):
    succeeded(pipeline(*PREPARE))
    entry = latest_entry(outputs)
    damage_manifest(entry, files=files)

    assert succeeded(pipeline("status")).output.startswith("prepare    -")  # no latest prepared set to trust
    succeeded(pipeline("clean"))
    again = succeeded(pipeline(*PREPARE))

    assert f"because the cached entry's manifest is damaged -> {entry}" in again.output
    assert read_manifest(entry)["files"]["color.npy"] == (entry / "color.npy").stat().st_size


def test_every_published_file_has_its_blake2b_in_the_manifest(pipeline, outputs):
    succeeded(pipeline(*PREPARE))
    entry = latest_entry(outputs)

    manifest = read_manifest(entry)

    assert set(manifest["hashes"]) == set(manifest["files"]) and "gray.npy" in manifest["hashes"]
    for name, digest in manifest["hashes"].items():
        assert digest == hashlib.blake2b((entry / name).read_bytes(), digest_size=16).hexdigest()


def test_a_same_size_corruption_upstream_is_recomputed_before_a_stage_reads_it(pipeline, outputs, monkeypatch):
    succeeded(pipeline(*PREPARE))
    prepared = latest_entry(outputs)
    good_gray = np.load(prepared / "gray.npy")
    zero_file(prepared / "gray.npy")
    seen = []

    def vae_that_reads_gray(params, inputs, out_dir, context):
        seen.append(np.load(inputs["prepare"] / "gray.npy"))
        (out_dir / "model.pt").write_bytes(b"weights")
        return {}
    replace_stage_entry(monkeypatch, registry.stage("vae"), vae_that_reads_gray)

    result = succeeded(pipeline("run", "--stages", "vae"))

    assert f"prepare/{prepared.name}: the cached entry's gray.npy changed content: recomputing it" in result.output
    assert np.array_equal(seen[0], good_gray)
    assert np.array_equal(np.load(prepared / "gray.npy"), good_gray)


def test_status_verify_finds_a_same_size_corruption(pipeline, outputs):
    succeeded(pipeline(*PREPARE))
    assert "verified: all 1 entries match their manifests" in succeeded(pipeline("status", "--verify")).output
    entry = latest_entry(outputs)
    zero_file(entry / "color.npy")

    result = pipeline("status", "--verify")

    assert f"damaged: prepare/{entry.name}: the cached entry's color.npy changed content" in result.output
    assert_one_clear_error_line(result, "1 of 1 entries damaged")


def test_run_on_a_prepared_set_with_a_damaged_manifest_says_to_prepare_again(pipeline, outputs):
    succeeded(pipeline(*PREPARE))
    damage_manifest(latest_entry(outputs), files=None)

    result = pipeline("run", "--stages", "vae")

    assert_one_clear_error_line(result, "the cached entry's manifest is damaged", "`pipeline prepare` again")


def test_status_verify_says_which_entries_have_no_content_hashes_to_check(pipeline, outputs):
    succeeded(pipeline(*PREPARE))
    entry = latest_entry(outputs)
    damage_manifest(entry, hashes={})  # as published before hashes were recorded

    result = succeeded(pipeline("status", "--verify"))

    assert f"sizes only: prepare/{entry.name}: published before content hashes were recorded" in result.output
