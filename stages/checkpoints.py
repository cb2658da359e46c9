"""Trained models as files: a state_dict plus the model's config dataclass, as plain types.

A checkpoint is `{"state_dict": ..., "config": asdict(config)}`, so `torch.load(weights_only=True)` reads it
(nothing is unpickled beyond tensors and plain values) and `Config(**saved["config"])` rebuilds the network
without the CLI. This is the contract between the stage that trains a model and the stages that use it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stages.models import build_colorizer, build_vae

MODEL = "model.pt"  # the trained network in a vae or colorize entry


@dataclass(frozen=True)
class VaeConfig:
    arch: str
    size: int
    channels: int
    latent_dim: int
    width: int
    recon: str

    def build(self) -> torch.nn.Module:
        return build_vae(self.arch, self.size, self.channels, self.latent_dim, self.width)


@dataclass(frozen=True)
class ColorizerConfig:
    arch: str
    size: int
    exact_luma: bool  # the colorizer's outputs are shifted to the input's luma (stages.luma.exact_luma)

    def build(self) -> torch.nn.Module:
        return build_colorizer(self.arch, self.size)


def save_model(path: Path, model: torch.nn.Module, config: VaeConfig | ColorizerConfig) -> None:
    torch.save({"state_dict": model.state_dict(), "config": asdict(config)}, path)


def _load(path: Path, device: torch.device, config_type):
    saved = torch.load(path, map_location=device, weights_only=True)
    config = config_type(**saved["config"])
    with torch.device("meta"):  # no random initialisation of weights about to be overwritten (90 M for StackNN)
        model = config.build()
    model.load_state_dict(saved["state_dict"], assign=True)
    return model.to(device).eval(), config


def load_vae(path: Path, device: torch.device) -> tuple[torch.nn.Module, VaeConfig]:
    """Rebuild a trained VAE, in eval mode on `device`, and its config."""
    return _load(path, device, VaeConfig)


def load_colorizer(path: Path, device: torch.device) -> tuple[torch.nn.Module, ColorizerConfig]:
    """Rebuild a trained colorizer, in eval mode on `device`, and its config."""
    return _load(path, device, ColorizerConfig)


def read_config(path: Path, config_type):
    """Only the config of a checkpoint (cheap: the tensors are mapped to the CPU and dropped)."""
    return config_type(**torch.load(path, map_location="cpu", weights_only=True)["config"])
