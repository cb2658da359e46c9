"""Specification of the shared training loop: resume checkpoints (a run that cannot resume says so and starts
over, rather than failing or silently ignoring what it found), and the knobs the time-to-quality benches use
(the training seconds at each evaluation, a stop predicate, the warm-up fraction)."""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from stages.contract import StageContext
from stages.training import CHECKPOINT, Job, fit, make_optimizer, one_cycle

EPOCHS = 3


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
