"""The tag judge: how often a tag (a hair color, say) can be read back from a colored face.

A small CNN trained on the true-color training faces to predict each face's tag; the colorize stage applies it
to the true-color test faces (its ceiling: no colorizer can be judged better than the truth is), to the
colorized ones and to the average-color baseline. A CNN rather than a linear model on pixels: the hair is a
region that moves from face to face, and a linear model on pixels could not find it (docs/decisions.md has
both judges' accuracies). Mirrored faces train it too: a hair color does not depend on the side a face turns to.

The judge only reads what it was shown: a tag column whose values do not match what the images show caps its
accuracy on the true colors, which is why that accuracy is always reported beside the others.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

EPOCHS = 12
BATCH = 64
LR = 3e-3


def _judge_network(classes: int, width: int = 32) -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*block(3, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
                         *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                         nn.Linear(2 * width, classes))


def train_tag_judge(images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int,
                    epochs: int = EPOCHS) -> nn.Module:
    """(N, 3, S, S) true colors in [0,1] and their (N,) tag indices in [0, classes) -> a judge in eval mode
    mapping images to (N, classes) logits. Deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = _judge_network(classes).to(images.device)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=LR, weight_decay=1e-3)
    steps = epochs * -(-len(images) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=steps)
    judge.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).to(images.device)
        for batch in order.split(BATCH):
            x = images[batch]
            mirrored = (torch.rand(len(batch), generator=generator) < 0.5).to(images.device)
            x = torch.where(mirrored[:, None, None, None], x.flip(-1), x)  # (B, 3, S, S)
            loss = F.cross_entropy(judge(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return judge.eval()


@torch.no_grad()
def judged_tags(judge: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) images -> (N,) the tag index the judge reads in each."""
    return torch.cat([judge(part).argmax(1) for part in images.split(512)])
