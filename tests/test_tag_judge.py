"""The tag judge reads a tag back from color, not from gray: on faces whose hair hue only the tag gives away."""
from __future__ import annotations

import torch
from helpers import tagged_hair_faces

from stages.tag_judge import judged_tags, train_tag_judge


def accuracy(judge, images: torch.Tensor, tag: torch.Tensor) -> float:
    return (judged_tags(judge, images) == tag - 1).float().mean().item()


def test_judge_reads_the_hair_tag_from_true_colors_and_not_from_gray():
    _, color_train, tag_train = tagged_hair_faces(96, seed=1)
    gray_test, color_test, tag_test = tagged_hair_faces(48, seed=2)

    judge = train_tag_judge(color_train, tag_train - 1, classes=3, seed=0)

    assert accuracy(judge, color_test, tag_test) >= 0.95
    assert accuracy(judge, gray_test.expand(-1, 3, -1, -1), tag_test) <= 0.5, "gray holds no hair color"


def test_judge_is_the_same_for_the_same_seed():
    _, color, tag = tagged_hair_faces(30, seed=3)

    first, second = (train_tag_judge(color, tag - 1, classes=3, seed=5, epochs=1) for _ in range(2))

    assert torch.equal(judged_tags(first, color), judged_tags(second, color))
    with torch.no_grad():
        assert torch.allclose(first(color), second(color))
