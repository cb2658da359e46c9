"""Trained models as files: a state_dict plus the model's config dataclass, as plain types.

A checkpoint is `{"state_dict": ..., "config": asdict(config)}`, so `torch.load(weights_only=True)` reads it
(nothing is unpickled beyond tensors and plain values) and `Config(**saved["config"])` rebuilds the network
without the CLI. This is the contract between the stage that trains a model and the stages that use it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stages.gan_models import build_gan
from stages.models import build_colorizer, build_vae

MODEL = "model.pt"  # the trained network in a vae, colorize or gan entry


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
    classes: int = 0  # chroma classes of a `classify` colorizer; 0 = it predicts chroma directly
    condition: str = ""  # the tag column it reads, if conditioned
    condition_values: tuple[str, ...] = ()  # that column's values; index i + 1 is value i, index 0 is "no tag"
    residual: bool = False  # the network starts from the average color (stages.models.build_colorizer)

    def build(self) -> torch.nn.Module:
        conditions = len(self.condition_values) + 1 if self.condition else 0
        return build_colorizer(self.arch, self.size, self.classes, conditions, self.residual)


@dataclass(frozen=True)
class GanConfig:
    arch: str
    size: int
    channels: int
    noise_dim: int
    width: int
    classes: tuple[str, ...]  # tag values of a conditional GAN, one per class index; () = unconditional
    spectral_norm: bool

    def __post_init__(self):  # JSON-like plain types give a list back
        object.__setattr__(self, "classes", tuple(self.classes))

    def build(self) -> torch.nn.Module:
        """The generator: what later stages use. The discriminator is saved beside it for resuming or probing."""
        return self.build_pair()[0]

    def build_pair(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return build_gan(self.arch, self.size, self.channels, self.noise_dim, self.width, len(self.classes),
                         self.spectral_norm)


def save_model(path: Path, model: torch.nn.Module, config: VaeConfig | ColorizerConfig | GanConfig,
               **companions: torch.nn.Module) -> None:
    """`companions` are saved beside the model by name (a GAN's discriminator), as state_dicts too."""
    torch.save({"state_dict": model.state_dict(), "config": asdict(config),
                **{name: companion.state_dict() for name, companion in companions.items()}}, path)


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


def load_generator(path: Path, device: torch.device) -> tuple[torch.nn.Module, GanConfig]:
    """Rebuild a trained GAN generator, in eval mode on `device`, and its config."""
    return _load(path, device, GanConfig)


def read_config(path: Path, config_type):
    """Only the config of a checkpoint (cheap: the tensors are mapped to the CPU and dropped)."""
    return config_type(**torch.load(path, map_location="cpu", weights_only=True)["config"])
