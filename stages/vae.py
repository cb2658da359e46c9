"""The VAE stage: train on the prepared gray (or color) faces, then write what a person needs to judge it.

Reads from the prepare entry: gray.npy or color.npy, split.npz. Writes model.pt, metrics.json, history.json,
loss.png, the grids (reconstructions, samples, interpolation, traversal, manifold when z is 2-D) and the arrays
behind them (*.npy), so the colorize stage can color exactly these images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages import metrics as m
from stages.models import build_vae
from stages.params import VaeParams
from stages.registry import StageContext, StageError
from stages.training import Job, batched, fit, load_model, resolve_device, save_model, write_training_record
from stages.viz import save_grid

RECONSTRUCTIONS = 18
SAMPLES = 64
INTERPOLATION_PAIRS = 6
INTERPOLATION_STEPS = 7
TRAVERSAL_STEPS = 11
MANIFOLD_SIDE = 15
NLL_IMAGES, NLL_SAMPLES = 256, 128
ACTIVE_KL = 0.01  # nats: a latent dimension whose mean KL is below this carries no information


def load_prepared(prepared: Path, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, C, S, S) float32 images in [0,1] for the requested channels, and the train/test indices."""
    try:
        if channels == 1:
            images = np.load(prepared / "gray.npy", allow_pickle=False)[:, None]
        else:
            images = np.load(prepared / "color.npy", allow_pickle=False).transpose(0, 3, 1, 2)
        split = np.load(prepared / "split.npz", allow_pickle=False)
        train, test = split["train"], split["test"]
    except (OSError, KeyError, ValueError) as error:
        raise StageError(f"the prepared set in {prepared} is unreadable ({error}): run `pipeline prepare --force`")
    if len(test) == 0:
        raise StageError("the prepared set has no test images: run `pipeline prepare --test-fraction 0.1`")
    return np.ascontiguousarray(images, dtype=np.float32) / 255.0, train, test


def vae_loss(model, x, noise, recon: str, beta: float):
    """Mean over the batch of recon NLL + β·KL (nats per image), with its two parts for the history."""
    logits, mu, logvar = model(x, noise)
    nll = m.reconstruction_nll(logits, x, recon).mean()
    kl = m.kl_per_dimension(mu, logvar).sum(1).mean()
    return nll + beta * kl, {"recon": nll.item(), "kl": kl.item()}


def _evaluator(test: torch.Tensor, params: VaeParams):
    def evaluate(model) -> dict[str, float]:
        generator = torch.Generator(device=test.device).manual_seed(12345)
        noise = torch.randn(len(test), params.latent_dim, generator=generator, device=test.device)
        loss, stats = vae_loss(model, test, noise, params.recon, params.beta)
        return {"loss": loss.item(), "test_recon": stats["recon"], "test_kl": stats["kl"]}
    return evaluate


def decode_images(model, z: torch.Tensor) -> torch.Tensor:
    """Latent codes -> images in [0,1] (the decoder's mean), in bounded-memory slices."""
    return torch.sigmoid(batched(model.decode, z))


@torch.no_grad()
def evaluate_model(model, test: torch.Tensor, params: VaeParams) -> dict:
    """Final test metrics, all per image in nats (β = 1: the true ELBO whatever β trained with)."""
    generator = torch.Generator(device=test.device).manual_seed(params.seed + 1)
    mu, logvar = batched(lambda x: torch.cat(model.encode(x), 1), test).split(params.latent_dim, 1)
    elbo_terms = []
    for _ in range(4):
        noise = torch.randn(mu.shape, generator=generator, device=test.device)
        logits = model.decode(mu + noise * torch.exp(0.5 * logvar))
        elbo_terms.append(m.reconstruction_nll(logits, test, params.recon))
    recon_nll = torch.stack(elbo_terms).mean().item()
    kl_dims = m.kl_per_dimension(mu, logvar).mean(0)
    neg_elbo = recon_nll + kl_dims.sum().item()
    nll = m.importance_sampled_nll(model, test[:NLL_IMAGES], params.recon, NLL_SAMPLES, generator)
    psnr, ssim = m.psnr_ssim(decode_images(model, mu).cpu().numpy(), test.cpu().numpy())
    result = {"test_neg_elbo": neg_elbo, "test_recon_nll": recon_nll, "test_kl": kl_dims.sum().item(),
              "test_nll_importance": nll, "nll_images": min(NLL_IMAGES, len(test)), "nll_samples": NLL_SAMPLES,
              "recon_psnr": psnr, "recon_ssim": ssim, "kl_per_dim": [round(v, 4) for v in kl_dims.tolist()],
              "active_dims": int((kl_dims > ACTIVE_KL).sum())}
    if params.recon == "bce":
        floor = m.bce_entropy_floor(test)
        result.update(entropy_floor=floor, neg_elbo_excess=neg_elbo - floor)
    return result


def traversal_labels(order, kl_dims: list[float]) -> list[str]:
    """Row labels of a traversal grid: which latent dimension, and whether it carries information at all."""
    return [f"z{d}  KL {kl_dims[d]:.2f}" if kl_dims[d] > ACTIVE_KL else f"z{d}  inactive" for d in order]


@torch.no_grad()
def write_grids(model, images: torch.Tensor, test_index: np.ndarray, kl_dims: list[float], params: VaeParams,
                out_dir: Path) -> None:
    """Reconstructions, samples, interpolations, traversals (and the 2-D manifold), as PNG grids and arrays."""
    device = images.device
    generator = torch.Generator(device=device).manual_seed(params.seed + 2)
    test = images[test_index]

    chosen = test_index[:RECONSTRUCTIONS]
    originals = images[chosen]
    reconstructions = decode_images(model, model.encode(originals)[0])
    save_grid(torch.cat([originals, reconstructions]).cpu(), len(chosen), out_dir / "reconstructions.png")
    np.save(out_dir / "reconstructions.npy", torch.stack([originals, reconstructions]).cpu().numpy())
    np.save(out_dir / "reconstruction_indices.npy", chosen)

    samples = decode_images(model, torch.randn(SAMPLES, params.latent_dim, generator=generator, device=device))
    save_grid(samples.cpu(), 8, out_dir / "samples.png")
    np.save(out_dir / "samples.npy", samples.cpu().numpy())

    pair_count = max(1, min(INTERPOLATION_PAIRS, len(test) // 2))  # a small test split gives fewer rows
    pairs = torch.randperm(len(test), generator=generator, device=device)[:2 * pair_count]
    pairs = pairs.repeat(2)[:2 * pair_count]  # one test image: interpolate it with itself
    ends = test[pairs].view(-1, 2, *test.shape[1:])  # (P, 2, C, S, S)
    mu_a, mu_b = model.encode(ends[:, 0])[0], model.encode(ends[:, 1])[0]
    weights = torch.linspace(0, 1, INTERPOLATION_STEPS, device=device).view(1, -1, 1)
    path = mu_a[:, None] + weights * (mu_b - mu_a)[:, None]  # (P, steps, Z)
    between = decode_images(model, path.flatten(0, 1)).view(len(ends), INTERPOLATION_STEPS, *test.shape[1:])
    interpolation = torch.cat([ends[:, :1], between, ends[:, 1:]], 1)  # (P, steps + 2, C, S, S)
    save_grid(interpolation.flatten(0, 1).cpu(), INTERPOLATION_STEPS + 2, out_dir / "interpolation.png")
    np.save(out_dir / "interpolation.npy", interpolation.cpu().numpy())

    order = np.argsort(kl_dims)[::-1]
    centre = model.encode(test)[0].mean(0)
    values = torch.linspace(-3, 3, TRAVERSAL_STEPS, device=device)
    codes = centre.repeat(len(order), TRAVERSAL_STEPS, 1)  # (Z, steps, Z)
    for row, dim in enumerate(order):
        codes[row, :, dim] = values
    traversal = decode_images(model, codes.flatten(0, 1)).view(len(order), TRAVERSAL_STEPS, *test.shape[1:])
    save_grid(traversal.flatten(0, 1).cpu(), TRAVERSAL_STEPS, out_dir / "traversal.png",
              traversal_labels(order, kl_dims))
    np.save(out_dir / "traversal.npy", traversal.cpu().numpy())
    np.save(out_dir / "traversal_dims.npy", order.copy())

    if params.latent_dim == 2:
        quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, MANIFOLD_SIDE))
        rows, cols = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")
        grid = torch.stack([cols.flatten(), rows.flatten()], 1).to(device)
        manifold = decode_images(model, grid)
        save_grid(manifold.cpu(), MANIFOLD_SIDE, out_dir / "manifold.png")
        np.save(out_dir / "manifold.npy", manifold.cpu().numpy())


def run(params: VaeParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    device = resolve_device(context.device)
    images_np, train_index, test_index = load_prepared(inputs["prepare"], params.channels)
    images = torch.from_numpy(images_np).to(device)
    size = images.shape[-1]
    torch.manual_seed(params.seed)
    model = build_vae(params.arch, size, params.channels, params.latent_dim, params.width).to(device)

    def batch_loss(model, x, generator):
        noise = torch.randn(len(x), params.latent_dim, generator=generator, device=device)
        return vae_loss(model, x, noise, params.recon, params.beta)

    job = Job(model=model, train_data=(images[train_index],), batch_loss=batch_loss,
              evaluate=_evaluator(images[test_index], params), epochs=params.epochs,
              batch_size=params.batch_size, lr=params.lr, seed=params.seed, label="vae")
    history = fit(job, context, device)

    save_model(out_dir / "model.pt", model, {"arch": params.arch, "size": size, "channels": params.channels,
                                              "latent_dim": params.latent_dim, "width": params.width,
                                              "recon": params.recon})
    results = evaluate_model(model, images[test_index], params)
    results.update(write_training_record(out_dir, history, model, f"VAE loss (nats/image, β={params.beta:g})"))
    write_grids(model, images, test_index, results["kl_per_dim"], params, out_dir)
    excess = f" (+{results['neg_elbo_excess']:.1f} over the entropy floor)" if "neg_elbo_excess" in results else ""
    results["headline"] = (f"test -ELBO {results['test_neg_elbo']:.1f} nats{excess}, KL {results['test_kl']:.1f}, "
                           f"{results['active_dims']}/{params.latent_dim} active dims, recon PSNR "
                           f"{results['recon_psnr']:.1f} dB, {results['images_per_second']:.0f} img/s")
    return results


def load_vae(path: Path, device: torch.device):
    """Rebuild a trained VAE from model.pt without the CLI."""
    return load_model(path, device,
                      lambda c: build_vae(c["arch"], c["size"], c["channels"], c["latent_dim"], c["width"]))
