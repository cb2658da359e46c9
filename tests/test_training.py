"""Specification of the shared training loop: resume checkpoints (a run that cannot resume says so and starts
over, rather than failing or silently ignoring what it found), the knobs the time-to-quality benches use
(the training seconds at each evaluation, a stop predicate, the warm-up fraction), and a training set read from
its file a batch at a time (a set bigger than the resident budget) training the weights of one held whole."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil

import pytest
import torch

from helpers import cli, latest_entry, succeeded
from stages import prepared_set
from stages.contract import StageContext
from stages.prepared_set import ImageRows, load_prepared, open_split
from stages.training import CHECKPOINT, Job, fit, make_optimizer, one_cycle

EPOCHS = 3
PREPARE = ("prepare", "--count", "60", "--size", "10")


class _Bar:
    def advance(self, steps: int = 1, status: str | None = None) -> None:
        pass


def linear_job() -> Job:
    """A tiny regression: y = x·w, 32 points, a Linear layer; seeded, so two runs are identical."""
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = torch.nn.Linear(4, 1)

    def batch_loss(model, x, y, noise):
        loss = (model(x) - y).pow(2).mean()
        return loss, {}

    return Job(model=model, train_data=(x, y), batch_loss=batch_loss,
               evaluate=lambda model: {"loss": (model(x) - y).pow(2).mean().item()}, epochs=EPOCHS,
               batch_size=8, lr=0.05, seed=0, label="toy")


def context_in(folder, lines: list[str]) -> StageContext:
    folder.mkdir(exist_ok=True)
    return StageContext(device="cpu", workers=1, resume_dir=folder, echo=lines.append,
                        progress=lambda total, label: contextlib.nullcontext(_Bar()))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "incomplete"])
def test_an_unreadable_resume_checkpoint_is_reported_in_one_line_and_training_starts_over(tmp_path, damage):
    fresh_lines: list[str] = []
    fresh = fit(linear_job(), context_in(tmp_path / "fresh", fresh_lines), torch.device("cpu"))
    folder = tmp_path / "damaged"
    folder.mkdir()
    if damage == "garbage":
        (folder / CHECKPOINT).write_bytes(b"not a checkpoint at all")
    else:
        torch.save({"model": linear_job().model.state_dict(), "train": [1.0]}, folder / CHECKPOINT)
        if damage == "truncated":
            data = (folder / CHECKPOINT).read_bytes()
            (folder / CHECKPOINT).write_bytes(data[:len(data) // 2])
    lines: list[str] = []

    history = fit(linear_job(), context_in(folder, lines), torch.device("cpu"))

    assert len(lines) == 1 and str(folder / CHECKPOINT) in lines[0] and "starts over" in lines[0], lines
    assert history.train == fresh.train and len(history.train) == EPOCHS, "the same run as one with no checkpoint"
    assert fresh_lines == []


def test_each_evaluation_records_the_training_seconds_before_it(tmp_path):
    history = fit(linear_job(), context_in(tmp_path, []), torch.device("cpu"))

    assert len(history.elapsed) == len(history.test) == EPOCHS
    assert all(0 < a < b for a, b in zip(history.elapsed, history.elapsed[1:]))
    assert history.elapsed[-1] == history.seconds
    assert history.as_dict()["elapsed"] == history.elapsed


def test_stop_ends_training_after_the_first_evaluation_it_accepts(tmp_path):
    full = fit(dataclasses.replace(linear_job(), epochs=6), context_in(tmp_path / "full", []), torch.device("cpu"))
    target = full.test[2]

    stopped = fit(dataclasses.replace(linear_job(), epochs=6, stop=lambda history: history.test[-1] <= target),
                  context_in(tmp_path / "stopped", []), torch.device("cpu"))

    first = next(i for i, value in enumerate(full.test) if value <= target)
    assert len(stopped.test) == first + 1 < 6
    assert stopped.test == full.test[:first + 1], "the same run up to there: stopping changes nothing before it"
    assert stopped.images == (first + 1) * 32


@pytest.mark.parametrize("warmup", [0.05, 0.15, 0.5])
def test_warmup_sets_where_the_learning_rate_peaks(warmup):
    optimizer = make_optimizer(torch.nn.Linear(1, 1), 0.1)
    schedule = one_cycle(optimizer, 0.1, 100, warmup)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()

    assert max(rates) == rates[round(100 * warmup) - 1] == 0.1
    assert rates[0] < 0.1 / 20 and rates[-1] < 0.1 / 1000


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "color"])
def test_image_rows_read_the_values_the_resident_set_holds_in_the_order_asked(prepared, channels):
    folder = latest_entry(prepared, "prepare")
    resident, _, _ = load_prepared(folder, channels)
    order = torch.tensor([7, 0, 31, 5, 5, 52])  # unsorted, with a repeat

    streamed = ImageRows(folder / (prepared_set.GRAY if channels == 1 else prepared_set.COLOR), "cpu")[order]

    assert streamed.dtype == torch.float32 and streamed.shape == (6, channels, 10, 10)
    assert torch.equal(streamed, torch.from_numpy(resident[order.numpy()]))


def test_the_train_split_is_streamed_only_above_the_resident_budget(prepared, monkeypatch):
    folder = latest_entry(prepared, "prepare")
    train, test, train_index, test_index = open_split(folder, 3, "cpu")
    assert isinstance(train, torch.Tensor)

    monkeypatch.setenv("PIPELINE_RESIDENT_BYTES", str(train.numel() * 4 - 1))
    streamed, streamed_test, _, _ = open_split(folder, 3, "cpu")

    assert isinstance(streamed, ImageRows) and streamed.shape == train.shape
    assert torch.equal(streamed[torch.arange(len(train))], train)
    assert torch.equal(streamed_test, test), "the test split is held whole either way"


def test_a_vae_trained_from_the_file_a_batch_at_a_time_equals_one_trained_from_memory(prepared, tmp_path,
                                                                                      monkeypatch):
    reads = []  # the rows of each read that picks rows by an index tensor (a training batch picks them so)
    monkeypatch.setattr(ImageRows, "__getitem__", lambda self, index, read=ImageRows.__getitem__:
                        isinstance(index, torch.Tensor) and reads.append(len(index)) or read(self, index))
    run = ("run", "--stages", "vae", "--set", "vae.arch=fc", "--set", "vae.channels=3", "--set", "vae.epochs=2",
           "--set", "vae.batch_size=16")
    resident, streamed = tmp_path / "resident", tmp_path / "streamed"
    for outputs in (resident, streamed):
        shutil.copytree(prepared, outputs, symlinks=True)

    succeeded(cli(resident, *run))
    assert reads == [], "a small set is held whole: batches are slices of a tensor"
    succeeded(cli(streamed, *run, env={"PIPELINE_RESIDENT_BYTES": "0"}))

    assert reads[:8] == [16, 16, 16, 6] * 2, "each epoch's batches of the 54 training faces, read from the file"
    one, other = latest_entry(resident, "vae"), latest_entry(streamed, "vae")
    assert one.name == other.name, "where the rows come from is not in the cache key"
    weights = [torch.load(entry / "model.pt", weights_only=True)["state_dict"] for entry in (one, other)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    metrics = [json.loads((entry / "metrics.json").read_text()) for entry in (one, other)]
    assert metrics[0]["test_neg_elbo"] == metrics[1]["test_neg_elbo"]


@pytest.mark.parametrize("arch", ["fc", "conv"])
def test_the_vae_test_loss_in_slices_equals_the_loss_of_one_pass(monkeypatch, arch):
    from stages import vae
    from stages.checkpoints import VaeConfig
    from stages.params import VaeParams

    params = VaeParams(arch=arch, channels=3)
    torch.manual_seed(0)
    model = VaeConfig(arch=arch, size=10, channels=3, latent_dim=params.latent_dim, width=params.width,
                      recon=params.recon).build().eval()
    test = torch.rand(23, 3, 10, 10)
    with torch.no_grad():
        whole = vae.test_loss_evaluator(test, params)(model), vae.evaluate_model(model, test, params)
        monkeypatch.setattr(vae, "EVALUATION_SLICE", 5)  # 4 slices of 5 and one of 3
        sliced = vae.test_loss_evaluator(test, params)(model), vae.evaluate_model(model, test, params)

    assert sliced[0].keys() == whole[0].keys() == {"loss", "test_recon", "test_kl"}
    for name in whole[0]:
        assert sliced[0][name] == pytest.approx(whole[0][name], rel=1e-6), name
    assert sliced[1]["test_recon_nll"] == pytest.approx(whole[1]["test_recon_nll"], rel=1e-6)
