"""Specification of every stage on a set bigger than the resident budget: each reads its training rows from the
prepared files a batch at a time (stages.prepared_set.ImageRows) and fits its whole-split statistics and judges to
a bounded sample of them (fitting_rows), and computes exactly what it computes with the set held in memory.

One run of every stage with the set held whole and one with PIPELINE_RESIDENT_BYTES=0 (every split streamed) are
made once for the module; each stage's test compares its two entries."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import cli, latest_entry, succeeded
from stages import prepared_set
from stages.prepared_set import FIT_IMAGES, ImageRows, fitting_rows

PREPARE = ("prepare", "--count", "60", "--size", "12", "--test-fraction", "0.15")  # too few for the judges: quick
BATCHES = {"vae": 16, "colorize": 8, "gan": 12}  # distinct, so each stage's training reads are told apart
RUN = ("run", "--stages", "vae,colorize,concepts,gan",
       "--set", "vae.arch=fc", "--set", "vae.epochs=1", "--set", "colorize.epochs=1", "--set", "gan.epochs=2",
       "--set", "gan.width=4", "--set", "gan.noise_dim=8", "--set", "concepts.min_count=15",
       *(f"--set={stage}.batch_size={size}" for stage, size in BATCHES.items()))
TIMINGS = ("train_seconds", "images_per_second", "headline")  # the only metrics allowed to differ


@pytest.fixture(scope="module")
def both_runs(prepared, tmp_path_factory):
    """(resident outputs, streamed outputs, the sizes of the row reads the streamed run made by index tensor)."""
    root = tmp_path_factory.mktemp("streamed")
    resident, streamed = root / "resident", root / "streamed"
    for outputs in (resident, streamed):
        shutil.copytree(prepared, outputs, symlinks=True)
    succeeded(cli(resident, *RUN))
    reads = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageRows, "__getitem__", lambda self, index, read=ImageRows.__getitem__:
                      isinstance(index, torch.Tensor) and reads.append(len(index)) or read(self, index))
        succeeded(cli(streamed, *RUN, env={"PIPELINE_RESIDENT_BYTES": "0"}))
    return resident, streamed, reads


@pytest.mark.parametrize("stage", ["vae", "colorize", "vae_color", "concepts", "gan", "gan_color"])
def test_a_stage_computes_from_the_file_what_it_computes_from_memory(both_runs, stage):
    resident, streamed, _ = both_runs
    one, other = latest_entry(resident, stage), latest_entry(streamed, stage)
    assert one.name == other.name, "where the rows come from is not in the cache key"

    metrics = [json.loads((entry / "metrics.json").read_text()) for entry in (one, other)]
    assert {k: v for k, v in metrics[0].items() if k not in TIMINGS} == \
           {k: v for k, v in metrics[1].items() if k not in TIMINGS}
    if (one / "model.pt").is_file():
        weights = [torch.load(entry / "model.pt", weights_only=True) for entry in (one, other)]
        for part in ("state_dict", "discriminator"):
            for name, value in weights[0].get(part, {}).items():
                assert torch.equal(value, weights[1][part][name]), (part, name)
    for array in sorted(one.glob("*.np[yz]")):
        saved = [np.load(entry / array.name, allow_pickle=False) for entry in (one, other)]
        if array.suffix == ".npz":
            assert all(np.array_equal(saved[0][key], saved[1][key]) for key in saved[0].files), array.name
        else:
            assert np.array_equal(saved[0], saved[1]), array.name


@pytest.mark.parametrize("stage", sorted(BATCHES))
def test_a_training_stage_reads_its_batches_from_the_file_when_the_set_is_over_budget(both_runs, stage):
    _, _, reads = both_runs
    train = len(np.load(latest_entry(both_runs[0], "prepare") / prepared_set.SPLIT)["train"])
    batch = BATCHES[stage]

    assert reads.count(batch) >= train // batch, f"{stage}'s full batches of {batch} rows, read from the file"


def test_whole_split_fits_take_every_row_up_to_a_bound_then_a_seeded_sample():
    assert fitting_rows(FIT_IMAGES, seed=0) == slice(None)

    sample = fitting_rows(3 * FIT_IMAGES, seed=0)

    assert len(sample) == len(np.unique(sample)) == FIT_IMAGES
    assert np.all(np.diff(sample) > 0) and sample[-1] < 3 * FIT_IMAGES
    assert np.array_equal(sample, fitting_rows(3 * FIT_IMAGES, seed=0))
    assert not np.array_equal(sample, fitting_rows(3 * FIT_IMAGES, seed=1))
