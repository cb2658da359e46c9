"""The colorizers that must beat the average color: color error AuC, the per-luma baseline, the classify loss and
conditioning on a tag, each on a few generated images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from helpers import HAIR_CHROMA, tagged_hair_faces

from stages.colorizers import (CELL_PRIOR, CHROMA_STEP, AverageColorResidual, ChromaBins, GlobalUNet, LumaBaseline,
                               chroma_of, classify_loss, color_from)
from stages.models import StackNN
from stages.metrics import color_error_auc

BT601 = (0.299, 0.587, 0.114)
SIDE = 8


def random_color(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def luma(color: torch.Tensor) -> torch.Tensor:
    return sum(w * color[:, c:c + 1] for c, w in enumerate(BT601))


# ----- color error AuC ------------------------------------------------------------------------------------------------


def test_color_auc_of_a_perfect_colorizer_is_100_percent():
    color = random_color(4).numpy()

    assert color_error_auc(color, color) == pytest.approx(100.0, abs=1e-9)


def test_color_auc_of_the_baseline_equals_a_threshold_sweep_done_by_hand():
    train, test = random_color(12, seed=1), random_color(3, seed=2)
    baseline = LumaBaseline().fit(luma(train), train)
    output = baseline(luma(test)).clamp(0, 1).numpy()

    auc = color_error_auc(output, test.numpy())

    ab = lambda images: rgb2lab(images.transpose(0, 2, 3, 1).astype(np.float64))[..., 1:]
    error = np.linalg.norm(ab(output) - ab(test.numpy()), axis=-1).ravel()
    thresholds = np.linspace(0, 150, 15001)
    fraction_within = (error[None, :] <= thresholds[:, None]).mean(1)
    by_hand = 100 * np.sum((fraction_within[1:] + fraction_within[:-1]) / 2 * np.diff(thresholds)) / 150
    assert auc == pytest.approx(by_hand, abs=0.01)
    assert 20 < auc < 99, "random colors are neither perfectly nor hopelessly guessed"


# ----- chroma and the per-luma baseline -------------------------------------------------------------------------------


def test_any_chroma_added_to_gray_keeps_its_luma_and_chroma_round_trips():
    color, gray = random_color(4), random_color(4, seed=3)[:, :1]
    chroma = torch.rand(4, 2, SIDE, SIDE) - 0.5

    assert torch.allclose(luma(color_from(gray, chroma)), gray, atol=1e-6)
    assert torch.allclose(color_from(luma(color), chroma_of(color)), color, atol=1e-6)


def test_luma_baseline_paints_the_mean_training_chroma_of_each_gray_level():
    dark, bright = torch.tensor([0.30, 0.10, 0.05]), torch.tensor([0.40, 0.85, 0.95])  # luma 0.15 and 0.73
    tint = torch.tensor([0.587, -0.299, 0.0]) * 0.05  # no luma of its own: both tints share dark's gray level
    train = torch.stack([dark + tint, dark - tint, bright, bright])[:, :, None, None].expand(-1, -1, SIDE, SIDE)

    output = LumaBaseline().fit(luma(train), train)(luma(train[1:3]))

    assert torch.allclose(output[0], dark[:, None, None].expand(3, SIDE, SIDE), atol=2e-3), "the two tints average"
    assert torch.allclose(output[1], bright[:, None, None].expand(3, SIDE, SIDE), atol=1e-5)


def test_average_color_with_position_adds_each_positions_mean_chroma_to_the_per_luma_one():
    gray = torch.full((4, 1, SIDE, SIDE), 0.5)
    left = torch.tensor([0.15, -0.10])[:, None, None]  # chroma of the left half; the right half is its opposite
    halves = torch.cat([left.expand(2, SIDE, SIDE // 2), -left.expand(2, SIDE, SIDE // 2)], 2)
    train = color_from(gray, halves.expand(4, -1, -1, -1))

    by_position = LumaBaseline(size=SIDE).fit(gray, train)(gray[:1])
    by_luma = LumaBaseline().fit(gray, train)(gray[:1])

    assert torch.allclose(by_position, train[:1], atol=1e-5), "position tells the halves apart"
    assert torch.allclose(by_luma, gray[:1].expand(-1, 3, -1, -1), atol=1e-5), "one gray level: their mean, gray"


def crossed_halves(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gray, color) of `count` flat faces, dark and bright in turn, whose chroma neither position nor gray level
    tells alone: left half dark -> reddish, bright -> bluish; right half the opposite."""
    gray = torch.tensor([0.3, 0.6]).repeat(count // 2)[:, None, None, None].expand(-1, 1, SIDE, SIDE)
    tint = torch.tensor([-0.1, 0.1])[:, None, None]  # (Cb, Cr): reddish
    sign = torch.tensor([1.0, -1.0]).repeat(count // 2)[:, None, None, None]  # dark +, bright -
    halves = torch.cat([tint.expand(2, SIDE, SIDE // 2), -tint.expand(2, SIDE, SIDE // 2)], 2)
    return gray, color_from(gray, sign * halves)


def test_average_color_with_position_paints_the_mean_chroma_of_each_position_and_gray_level_together():
    gray, train = crossed_halves(200)
    inner = (slice(None), slice(None), slice(1, SIDE - 1), slice(1, SIDE // 2 - 1))  # left half, 3 x 3 all left

    average = LumaBaseline(size=SIDE).fit(gray, train)(gray[:2])
    seen_once = LumaBaseline(size=SIDE).fit(gray[:2], train[:2])(gray[:2])

    assert torch.allclose(LumaBaseline().fit(gray, train)(gray[:2]), gray[:2].expand(-1, 3, -1, -1), atol=1e-5), \
        "gray level alone: every tint averages to gray"
    true, found = chroma_of(train[:2])[inner], chroma_of(average)[inner]
    assert torch.allclose(found, true * 900 / (900 + CELL_PRIOR), atol=1e-4), "9 x 100 pixels per cell: near exact"
    kept = chroma_of(seen_once)[inner] / chroma_of(train[:2])[inner]
    assert torch.allclose(kept, torch.full_like(kept, 9 / (9 + CELL_PRIOR)), atol=1e-4), \
        "a cell seen by few pixels stays near the average of position and gray level (here: gray)"


def test_residual_stacknn_starts_exactly_at_the_average_color_and_trains_only_the_network():
    train = random_color(6)
    model = AverageColorResidual(StackNN(SIDE), SIDE)
    torch.nn.init.zeros_(model.net.head[-1].weight)  # the net's output is then its bias alone

    model.start_at(luma(train), train)

    average = LumaBaseline(size=SIDE).fit(luma(train), train)
    assert torch.allclose(model(luma(train)), average(luma(train)), atol=1e-6)
    assert all(p.requires_grad for p in model.net.parameters()) and not list(model.prior.parameters())


def test_conv_with_the_average_color_start_paints_exactly_that_average_before_training_and_then_learns():
    torch.manual_seed(0)
    train = random_color(6)
    model = GlobalUNet(width=8, average_color_size=SIDE)

    model.start_at(luma(train), train)

    average = LumaBaseline(size=SIDE).fit(luma(train), train)
    with torch.no_grad():
        assert torch.allclose(model.eval()(luma(train)), average(luma(train)), atol=1e-6)
    model.train()
    mse = lambda out, y: (color_from(luma(train), model.chroma(out)) - y).pow(2).mean()
    model, losses = train_steps(model, luma(train), train, None, mse, steps=20)
    assert losses[-1] < losses[0], "the head starts at zero but still learns what the average misses"
    assert not list(model.average.parameters()), "the average color is fitted, never trained"


def test_classify_with_the_average_color_start_reads_out_near_that_average_before_training():
    train = random_color(6)
    bins, _ = ChromaBins.fit(train)
    model = GlobalUNet(classes=len(bins.centers), width=8, average_color_size=SIDE)
    model.bins.load_state_dict(bins.state_dict())

    model.start_at(luma(train), train)

    average = chroma_of(LumaBaseline(size=SIDE).fit(luma(train), train)(luma(train)))
    with torch.no_grad():
        painted = chroma_of(model.eval()(luma(train)))
    assert (painted - average).abs().max() < CHROMA_STEP / 4, "within a quarter of a chroma bin of the average"


# ----- classify loss and conditioning ---------------------------------------------------------------------------------


def two_tinted_sets(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gray textures of one distribution whose chroma is set by a tag: tag 1 bluish, tag 2 reddish; gray alone
    cannot tell them apart."""
    gray = 0.4 + 0.2 * torch.rand(count, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    tag = torch.arange(count) % 2 + 1
    chroma = torch.tensor([[0.15, -0.10], [-0.15, 0.10]])[tag - 1][:, :, None, None].expand(-1, -1, SIDE, SIDE)
    return gray, color_from(gray, chroma), tag


def train_steps(model, gray, color, tag, loss_of, steps: int = 40):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = loss_of(model.features(gray, tag), color)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_chroma_bins_rebalance_toward_rare_colors_and_read_out_a_class_center():
    common, rare = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.9, 0.2, 0.2])
    color = torch.stack([common] * 9 + [rare])[:, :, None, None].expand(-1, -1, SIDE, SIDE)

    bins, weights = ChromaBins.fit(color)

    assert len(bins.centers) == 2
    rare_class = bins.classes(color[-1:]).flatten()[0]
    assert weights[rare_class] > 2 * weights[1 - rare_class]
    sure = torch.full((1, 2, SIDE, SIDE), -20.0)
    sure[:, rare_class] = 20.0
    assert torch.allclose(bins.readout(sure)[0, :, 0, 0], bins.centers[rare_class])


def test_classify_loss_trains_and_keeps_the_gray_input_as_luma():
    torch.manual_seed(0)
    gray, color, tag = two_tinted_sets(8)
    gray = gray - 0.1 + 0.2 * (tag == 2)[:, None, None, None]  # now the tint is learnable from gray alone
    color = color_from(gray, chroma_of(color))
    bins, weights = ChromaBins.fit(color)
    model = GlobalUNet(classes=len(bins.centers), width=8)
    model.bins.load_state_dict(bins.state_dict())

    model, losses = train_steps(model, gray, color, None, lambda out, y: classify_loss(out, y, model.bins, weights))

    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        output = model(gray)
    assert torch.allclose(luma(output), gray, atol=1e-5)
    assert_each_image_nearer_its_own_tint(output, color)


def test_conditioning_on_a_tag_tells_apart_colors_that_gray_cannot():
    torch.manual_seed(0)
    gray, color, tag = two_tinted_sets(8)
    conditioned = GlobalUNet(conditions=3, width=8)
    mse = lambda out, y: (color_from(gray, conditioned.chroma(out)) - y).pow(2).mean()

    conditioned, _ = train_steps(conditioned, gray, color, tag, mse, steps=60)

    with torch.no_grad():
        output = conditioned(gray, tag)
    assert_each_image_nearer_its_own_tint(output, color)


HAIR_SIDE = 12


def hair_tag_read_back(color: torch.Tensor, tag: torch.Tensor) -> float:
    """Share of images whose hair (top third) chroma is nearest their own tag's hair chroma."""
    hair = chroma_of(color[:, :, :HAIR_SIDE // 3]).mean((2, 3))  # (N, 2)
    nearest = torch.cdist(hair, torch.tensor(HAIR_CHROMA)).argmin(1) + 1
    return (nearest == tag).float().mean().item()


def test_conditioned_average_color_paints_each_tags_hair_before_any_training():
    gray, color, tag = tagged_hair_faces(60, HAIR_SIDE, seed=1)
    gray_test, _, tag_test = tagged_hair_faces(30, HAIR_SIDE, seed=2)
    model = AverageColorResidual(StackNN(HAIR_SIDE, conditions=4), HAIR_SIDE, conditions=4)

    model.start_at(gray, color, tag)

    with torch.no_grad():
        assert hair_tag_read_back(model(gray_test, tag_test), tag_test) == 1.0
        unknown = model(gray_test, torch.zeros_like(tag_test))
    assert hair_tag_read_back(unknown, tag_test) < 0.7, "no tag given: the average of all hair, not a guess"


@pytest.mark.parametrize("arch, steps", [("stacknn", 30), ("conv", 60)])
def test_a_colorizer_given_the_tag_at_every_pixel_learns_each_tags_hair_hue(arch, steps):
    torch.manual_seed(0)
    gray, color, tag = tagged_hair_faces(48, HAIR_SIDE, seed=1)
    gray_test, _, tag_test = tagged_hair_faces(24, HAIR_SIDE, seed=2)
    if arch == "stacknn":
        model = StackNN(HAIR_SIDE, conditions=4)
        model.start_at(color.mean(0))
    else:
        model = GlobalUNet(conditions=4, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    for _ in range(steps):
        loss = (model(gray, tag) - color).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        assert hair_tag_read_back(model.eval()(gray_test, tag_test), tag_test) >= 0.95


def assert_each_image_nearer_its_own_tint(output: torch.Tensor, color: torch.Tensor):
    """Images alternate between the two tints of `two_tinted_sets`; each output's mean chroma must be nearer
    its own image's tint than the other one."""
    chroma, true = chroma_of(output).mean((2, 3)), chroma_of(color).mean((2, 3))
    own = (chroma - true).norm(dim=1)
    other = (chroma - true[[1, 0] * (len(true) // 2)]).norm(dim=1)
    assert (own < other / 2).all(), (chroma, true)
