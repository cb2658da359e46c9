"""The realism judge on generated faces: real-vs-real looks real, blur and collapse are caught, seeds repeat."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from stages.faces import generate_face
from stages.judge import realism
from stages.sources import resize_square

pytestmark = pytest.mark.slow  # N >= 500 faces per sanity check: seconds each

N = 500


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """2N distinct 30x30 color faces from the embedded generator, (2N, 3, 30, 30) in [0, 1]."""
    pixels = np.stack([resize_square(generate_face(i)[0], 30) for i in range(2 * N)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def real_vs_real(faces) -> dict:
    return realism(faces[:N], faces[N:], seed=0)


def test_real_faces_against_other_real_faces_look_real(real_vs_real):
    assert real_vs_real["n"] == N
    assert real_vs_real["c2st"] <= 0.60
    assert real_vs_real["coverage"] >= 0.9
    assert 0 < real_vs_real["c2st_std"] < 0.05


@pytest.fixture(scope="module")
def blurred(faces) -> dict:
    """The first N faces, 3x3 box-blurred (replicated edges), judged against the other N."""
    images = F.avg_pool2d(F.pad(faces[:N], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return realism(images, faces[N:], seed=0)


def test_blurred_faces_are_caught_by_the_classifier_and_the_frechet_distance(blurred, real_vs_real):
    assert blurred["c2st"] >= 0.75
    assert blurred["fd"] >= 5 * real_vs_real["fd"]


def test_blurred_but_varied_faces_cover_far_more_than_ten_faces_repeated(faces, blurred):
    ten_faces = faces[torch.arange(N) % 10]

    few = realism(ten_faces, faces[N:], seed=0)

    assert few["coverage"] <= 0.15
    assert blurred["coverage"] >= 0.8


def test_one_face_repeated_covers_almost_nothing(faces):
    repeated = faces[:1].repeat(N, 1, 1, 1)

    assert realism(repeated, faces[N:], seed=0)["coverage"] <= 0.1


def test_the_average_face_repeated_covers_almost_nothing(faces):
    """The fully blurred generator: it lies near every face in pixel distance, yet it is one face."""
    average = faces[:N].mean(0, keepdim=True).repeat(N, 1, 1, 1)

    assert realism(average, faces[N:], seed=0)["coverage"] <= 0.1


def test_same_seed_gives_the_same_numbers_and_leaves_torch_random_state_alone(faces):
    gray = faces[:, :1, 5:17, 5:17]  # 12x12 gray crops: any size >= 8, one channel
    torch.manual_seed(123)
    first = realism(gray[:100], gray[100:200], seed=3)
    draw_after_judging = torch.rand(1)
    second = realism(gray[:100], gray[100:200], seed=3)
    torch.manual_seed(123)

    assert first == second
    assert torch.equal(draw_after_judging, torch.rand(1))
    assert set(first) == {"c2st", "c2st_std", "density", "coverage", "fd", "n"}


def test_images_of_the_wrong_shape_are_refused(faces):
    with pytest.raises(ValueError, match="1 or 3"):
        realism(faces[:50, :2], faces[50:100, :2])
    with pytest.raises(ValueError, match="generated images are"):
        realism(faces[:50, :1], faces[50:100])
