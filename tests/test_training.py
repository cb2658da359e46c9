"""stages.training.fit's schedule and stopping knobs, on a tiny real regression trained for a few epochs."""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import torch

from stages.registry import StageContext
from stages.training import Job, fit, make_optimizer, one_cycle


def context(resume_dir: Path) -> StageContext:
    resume_dir.mkdir(parents=True, exist_ok=True)
    quiet = contextlib.nullcontext(SimpleNamespace(advance=lambda *_: None))
    return StageContext(device="cpu", workers=None, resume_dir=resume_dir, echo=print,
                        progress=lambda total, label: quiet)


def regression_job(epochs: int, **knobs) -> Job:
    """y = 3x - 1 with a little noise, learnt by one Linear layer; the test loss is the MSE on held-out points."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, generator=generator)
    y = 3 * x - 1 + 0.01 * torch.randn(256, 1, generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)

    def batch_loss(model, x, y, generator):
        loss = (model(x) - y).pow(2).mean()
        return loss, {}

    def evaluate(model):
        return {"loss": (model(x[:64]) - y[:64]).pow(2).mean().item()}

    return Job(model=model, train_data=(x[64:], y[64:]), batch_loss=batch_loss, evaluate=evaluate, epochs=epochs,
               batch_size=16, lr=0.1, seed=0, label="regression", **knobs)


def test_each_evaluation_records_the_training_seconds_before_it(tmp_path):
    history = fit(regression_job(epochs=4), context(tmp_path), torch.device("cpu"))

    assert len(history.elapsed) == len(history.test) == 4
    assert all(0 < a < b for a, b in zip(history.elapsed, history.elapsed[1:]))
    assert history.elapsed[-1] == history.seconds
    assert history.as_dict()["elapsed"] == history.elapsed


def test_stop_ends_training_after_the_first_evaluation_it_accepts(tmp_path):
    full = fit(regression_job(epochs=6), context(tmp_path / "full"), torch.device("cpu"))
    target = full.test[2]  # reached at epoch 3 at the latest; the loss keeps falling after it

    stopped = fit(regression_job(epochs=6, stop=lambda history: history.test[-1] <= target),
                  context(tmp_path / "stopped"), torch.device("cpu"))

    first = next(i for i, value in enumerate(full.test) if value <= target)
    assert len(stopped.test) == first + 1 < 6
    assert stopped.test == full.test[:first + 1]  # the same run up to there: stopping changes nothing before it
    assert stopped.images == (first + 1) * 192


def test_warmup_sets_where_the_learning_rate_peaks(tmp_path):
    def learning_rates(warmup: float) -> list[float]:
        optimizer = make_optimizer(torch.nn.Linear(1, 1), 0.1)
        schedule = one_cycle(optimizer, 0.1, 100, warmup)
        rates = []
        for _ in range(100):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return rates

    for warmup in (0.05, 0.15, 0.5):
        rates = learning_rates(warmup)
        assert max(rates) == rates[round(100 * warmup) - 1] == 0.1
        assert rates[0] < 0.1 / 20 and rates[-1] < 0.1 / 1000
