"""The GAN networks and their training loop, below the stage: shapes, one step, resume, NaN guard, collapse."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from stages.gan import collapse_warning, diversity
from stages.gan_models import build_gan
from stages.gan_training import GanJob, adam, gan_step, train_gan
from stages.contract import StageError


@dataclass
class QuietContext:
    resume_dir: Path
    lines: list[str] = field(default_factory=list)

    def echo(self, line: str) -> None:
        self.lines.append(line)

    @contextlib.contextmanager
    def progress(self, total: int, label: str):
        class Bar:
            def advance(self, steps=1, status=None):
                pass
        yield Bar()


def faces(count: int = 24, size: int = 12) -> torch.Tensor:
    """Distinct bright squares on dark ground, in [0, 1] as the prepared set holds them: something a GAN can
    start to learn in a few steps."""
    images = torch.zeros(count, 1, size, size)
    for i in range(count):
        top, left = i % (size - 4), (3 * i) % (size - 4)
        images[i, :, top:top + 4, left:left + 4] = 1.0
    return images


def job(real: torch.Tensor, epochs: int, arch: str = "dcgan", classes: int = 0, lr: float = 2e-4) -> GanJob:
    torch.manual_seed(0)
    generator, discriminator = build_gan(arch, real.shape[-1], real.shape[1], 8, width=4, classes=classes)
    labels = torch.arange(len(real)) % classes if classes else None
    return GanJob(generator, discriminator, real, labels, noise_dim=8, epochs=epochs, batch_size=8, lr=lr, seed=0)


@pytest.mark.parametrize("arch", ["fc", "dcgan"])
@pytest.mark.parametrize("size", [30, 64])
def test_generator_draws_images_in_tanh_range_that_the_discriminator_scores(arch, size):
    generator, discriminator = build_gan(arch, size, 3, noise_dim=16, width=4, classes=5)
    labels = torch.tensor([0, 4])

    images = generator(torch.randn(2, 16), labels)

    assert images.shape == (2, 3, size, size)
    assert images.abs().max() <= 1.0
    assert discriminator(images, labels).shape == (2,)


def test_one_step_moves_discriminator_towards_telling_real_from_fake():
    given = job(faces(), epochs=1)
    generator, discriminator = given.generator, given.discriminator
    opt_g, opt_d = adam(generator, 2e-3), adam(discriminator, 2e-3)
    z = torch.randn(24, 8, generator=torch.Generator().manual_seed(1))
    real = given.real * 2 - 1  # as D sees the training images: in G's range
    with torch.no_grad():
        before = discriminator(real) - discriminator(generator(z))

    stats = [gan_step(generator, discriminator, opt_g, opt_d, real, None, z, None) for _ in range(5)]

    with torch.no_grad():
        after = discriminator(real) - discriminator(generator(z))
    assert after.mean() > before.mean()
    assert 0 < stats[-1]["d_real"] < 1 and 0 < stats[-1]["d_fake"] < 1


@pytest.mark.parametrize("arch", ["fc", "dcgan"])  # fc: its discriminator's dropout must resume exactly too
def test_interrupted_training_resumes_to_the_same_history(tmp_path, arch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    uninterrupted = train_gan(job(faces(), 3, arch), QuietContext(tmp_path / "a"), torch.device("cpu"))

    train_gan(job(faces(), 2, arch), QuietContext(tmp_path / "b"), torch.device("cpu"))  # checkpoint after epoch 1
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    context = QuietContext(tmp_path / "b")
    resumed = train_gan(job(faces(), 3, arch), context, torch.device("cpu"))

    assert any("resuming from epoch 1 of 3" in line for line in context.lines)
    assert resumed.g_loss == pytest.approx(uninterrupted.g_loss, rel=1e-6)
    assert resumed.d_real == pytest.approx(uninterrupted.d_real, rel=1e-6)


def test_a_non_finite_loss_stops_with_one_line(tmp_path):
    broken = job(faces(), epochs=2)
    broken.real = broken.real.clone()
    broken.real[0, 0, 0, 0] = float("nan")

    with pytest.raises(StageError) as error:
        train_gan(broken, QuietContext(tmp_path), torch.device("cpu"))

    message = str(error.value)
    assert "\n" not in message and "non-finite at epoch 1" in message and "gan.lr" in message
    assert not (tmp_path / "checkpoint.pt").exists()


def test_collapse_detector_fires_on_a_generator_that_draws_one_image():
    real = faces()
    one_image = real[:1].expand(64, -1, -1, -1)
    spread_out = torch.cat([real, real.flip(-1), real.flip(-2)])

    assert diversity(one_image, real) == pytest.approx(0.0)
    assert "mode collapse" in collapse_warning(diversity(one_image, real))
    assert collapse_warning(diversity(spread_out, real)) == ""
