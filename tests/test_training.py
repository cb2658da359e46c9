"""Specification of the shared training loop's resume checkpoints: a run that cannot resume says so and starts
over, rather than failing or silently ignoring what it found."""
from __future__ import annotations

import contextlib

import pytest
import torch

from stages.contract import StageContext
from stages.training import CHECKPOINT, Job, fit

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

    def batch_loss(model, x, y, generator):
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
