"""The VAE stage: train on the prepared gray (or color) faces, then write what a person needs to judge it.

Reads the prepared set (stages.prepared_set). Writes the model (stages.checkpoints), history.json, loss.png, the
grids (reconstructions, samples, interpolation, traversal, manifold when z is 2-D) and the arrays behind them
(stages.vae_outputs), so vae_color can color exactly these images.

Samples come from one of two samplers, and both are scored by the realism judge (stages.judge) against the same
real test faces: `prior` draws z ~ N(0, I), as the reference does; `gmm` draws from a Gaussian mixture fitted to
the training set's posterior means (ex-post density estimation, Ghosh et al. 2020), which avoids the holes the
aggregate posterior leaves in the prior. samples.png shows the configured sampler.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages import distributed, gmm, judge
from stages import metrics as m
from stages import vae_outputs
from stages.checkpoints import MODEL, VaeConfig, save_model
from stages.contract import StageContext
from stages.models import decode_images, encode_means, map_in_slices
from stages.params import VaeParams
from stages.prepared_set import ImageRows, open_split
from stages.training import Job, fit, resolve_device, write_training_record
from stages.viz import save_grid, traversal_labels

RECONSTRUCTIONS = 18
SAMPLES = 64
INTERPOLATION_PAIRS = 6
INTERPOLATION_STEPS = 7
TRAVERSAL_STEPS = 11
MANIFOLD_SIDE = 15
NLL_IMAGES, NLL_SAMPLES = 256, 128
GMM_CODES = 4000  # training codes (at most) the mixture is fitted to: EM cost grows with them, its fit does not
EVALUATION_SLICE = 512  # test images per forward pass (as map_in_slices): a big test split fits in memory


def vae_loss(model, x, noise, recon: str, beta: float):
    """Mean over the batch of recon NLL + β·KL (nats per image), with its two parts for the history."""
    logits, mu, logvar = model(x, noise)
    nll = m.reconstruction_nll(logits, x, recon).mean()
    kl = m.kl_per_dimension(mu, logvar).sum(1).mean()
    return nll + beta * kl, {"recon": nll.item(), "kl": kl.item()}


def test_loss_evaluator(test: torch.Tensor, params: VaeParams):
    def evaluate(model) -> dict[str, float]:
        generator = torch.Generator(device=test.device).manual_seed(12345)
        noise = torch.randn(len(test), params.latent_dim, generator=generator, device=test.device)
        totals = {"loss": 0.0, "test_recon": 0.0, "test_kl": 0.0}
        for start in range(0, len(test), EVALUATION_SLICE):
            part = slice(start, start + EVALUATION_SLICE)
            loss, stats = vae_loss(model, test[part], noise[part], params.recon, params.beta)
            share = len(test[part]) / len(test)
            for name, value in zip(totals, (loss.item(), stats["recon"], stats["kl"])):
                totals[name] += value * share
        return totals
    return evaluate


@torch.no_grad()
def evaluate_model(model, test: torch.Tensor, params: VaeParams) -> dict:
    """Final test metrics, all per image in nats (β = 1: the true ELBO whatever β trained with)."""
    generator = torch.Generator(device=test.device).manual_seed(params.seed + 1)
    mu, logvar = map_in_slices(lambda x: torch.cat(model.encode(x), 1), test).split(params.latent_dim, 1)
    elbo_terms = []
    for _ in range(4):
        noise = torch.randn(mu.shape, generator=generator, device=test.device)
        z = mu + noise * torch.exp(0.5 * logvar)
        elbo_terms.append(torch.cat([m.reconstruction_nll(model.decode(z[i:i + EVALUATION_SLICE]),
                                                          test[i:i + EVALUATION_SLICE], params.recon)
                                     for i in range(0, len(test), EVALUATION_SLICE)]))
    recon_nll = torch.stack(elbo_terms).mean().item()
    kl_dims = m.kl_per_dimension(mu, logvar).mean(0)
    neg_elbo = recon_nll + kl_dims.sum().item()
    nll = m.importance_sampled_nll(model, test[:NLL_IMAGES], params.recon, NLL_SAMPLES, generator)
    psnr, ssim = m.mean_psnr_ssim((decode_images(model, mu[i:i + EVALUATION_SLICE]).cpu().numpy(),
                                   test[i:i + EVALUATION_SLICE].cpu().numpy())  # a slice at a time: a big test
                                  for i in range(0, len(test), EVALUATION_SLICE))  # split's copies are never held
    result = {"test_neg_elbo": neg_elbo, "test_recon_nll": recon_nll, "test_kl": kl_dims.sum().item(),
              "test_nll_importance": nll, "nll_images": min(NLL_IMAGES, len(test)), "nll_samples": NLL_SAMPLES,
              "recon_psnr": psnr, "recon_ssim": ssim, "kl_per_dim": [round(v, 4) for v in kl_dims.tolist()],
              "active_dims": int((kl_dims > m.ACTIVE_KL).sum())}
    if params.recon == "bce":
        floor = m.bce_entropy_floor(test)
        result.update(entropy_floor=floor, neg_elbo_excess=neg_elbo - floor)
    return result


@torch.no_grad()
def write_grids(model, test: torch.Tensor, test_index: np.ndarray, samples: torch.Tensor, kl_dims: list[float],
                params: VaeParams, out_dir: Path) -> None:
    """Reconstructions, samples, interpolations, traversals (and the 2-D manifold), as PNG grids and arrays.
    `test` holds the prepared set's images at `test_index`, in that order."""
    device = test.device
    generator = torch.Generator(device=device).manual_seed(params.seed + 2)

    chosen = test_index[:RECONSTRUCTIONS]
    originals = test[:RECONSTRUCTIONS]
    reconstructions = decode_images(model, model.encode(originals)[0])
    save_grid(torch.cat([originals, reconstructions]).cpu(), len(chosen), out_dir / "reconstructions.png")

    save_grid(samples.cpu(), 8, out_dir / "samples.png")

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

    order = np.argsort(kl_dims)[::-1]
    centre = encode_means(model, test).mean(0)
    values = torch.linspace(-3, 3, TRAVERSAL_STEPS, device=device)
    codes = centre.repeat(len(order), TRAVERSAL_STEPS, 1)  # (Z, steps, Z)
    for row, dim in enumerate(order):
        codes[row, :, dim] = values
    traversal = decode_images(model, codes.flatten(0, 1)).view(len(order), TRAVERSAL_STEPS, *test.shape[1:])
    labels = traversal_labels(order, kl_dims)
    save_grid(traversal.flatten(0, 1).cpu(), TRAVERSAL_STEPS, out_dir / "traversal.png", labels)

    if params.latent_dim == 2:
        quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, MANIFOLD_SIDE))
        rows, cols = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")
        grid = torch.stack([cols.flatten(), rows.flatten()], 1).to(device)
        manifold = decode_images(model, grid)
        save_grid(manifold.cpu(), MANIFOLD_SIDE, out_dir / "manifold.png")

    vae_outputs.write(out_dir, vae_outputs.VaeOutputs(
        samples=samples.cpu().numpy(), interpolation=interpolation.cpu().numpy(),
        traversal=traversal.cpu().numpy(), traversal_dims=order.copy(), traversal_labels=labels,
        reconstructions=torch.stack([originals, reconstructions]).cpu().numpy(), reconstruction_indices=chosen,
        manifold=manifold.cpu().numpy() if params.latent_dim == 2 else None))


@torch.no_grad()
def sample_codes(model, train: torch.Tensor | ImageRows, params: VaeParams, count: int) -> tuple[dict[str, torch.Tensor], str]:
    """`count` latent codes from each sampler (name -> (count, Z)), and a description of the fitted mixture."""
    generator = torch.Generator(device=train.device).manual_seed(params.seed + 2)
    prior = torch.randn(count, params.latent_dim, generator=generator, device=train.device)
    chosen = torch.randperm(len(train), generator=generator, device=train.device)[:GMM_CODES]
    mixture = gmm.fit(encode_means(model, train[chosen]).cpu().numpy(), seed=params.seed)
    fitted = torch.from_numpy(mixture.sample(count, params.seed)).to(train.device)
    return {"prior": prior, "gmm": fitted}, mixture.describe()


@torch.no_grad()
def score_samplers(model, codes: dict[str, torch.Tensor], test: torch.Tensor, seed: int) -> dict[str, dict]:
    """The judge's realism numbers of each sampler's decoded codes against the same real test faces."""
    real = test[:judge.REAL_IMAGES]
    return {name: judge.realism(decode_images(model, z[:len(real)]), real, seed=seed) for name, z in codes.items()}


def run(params: VaeParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    device = resolve_device(context.device)
    train, test, train_index, test_index = open_split(inputs["prepare"], params.channels, device)
    torch.manual_seed(params.seed)
    config = VaeConfig(arch=params.arch, size=test.shape[-1], channels=params.channels,
                       latent_dim=params.latent_dim, width=params.width, recon=params.recon)
    model = config.build().to(device)

    def batch_loss(model, x, noise):
        return vae_loss(model, x, noise(params.latent_dim), params.recon, params.beta)

    job = Job(model=model, train_data=(train,), batch_loss=batch_loss,
              evaluate=test_loss_evaluator(test, params), epochs=params.epochs,
              batch_size=params.batch_size, lr=params.lr, seed=params.seed, label="vae")
    history = fit(job, context, device)
    if not distributed.world().main:
        return {}  # rank 0 evaluates, draws and saves: the same model is on every rank

    save_model(out_dir / MODEL, model, config)
    results = evaluate_model(model, test, params)
    results.update(write_training_record(out_dir, history, model, f"VAE loss (nats/image, β={params.beta:g})"))
    codes, results["gmm_fit"] = sample_codes(model, train, params, max(SAMPLES, min(judge.REAL_IMAGES, len(test))))
    write_grids(model, test, test_index, decode_images(model, codes[params.sampler][:SAMPLES]),
                results["kl_per_dim"], params, out_dir)
    excess = f" (+{results['neg_elbo_excess']:.1f} over the entropy floor)" if "neg_elbo_excess" in results else ""
    realism = ""
    if len(test) >= judge.MIN_IMAGES:
        results["realism"] = score_samplers(model, codes, test, params.seed)
        chosen = results["realism"][params.sampler]
        results.update(c2st=chosen["c2st"], coverage=chosen["coverage"], density=chosen["density"],
                       fd=chosen["fd"])
        realism = f", {params.sampler} samples C2ST {chosen['c2st']:.2f}, coverage {chosen['coverage']:.2f}"
    results["headline"] = (f"test -ELBO {results['test_neg_elbo']:.1f} nats{excess}, KL {results['test_kl']:.1f}, "
                           f"{results['active_dims']}/{params.latent_dim} active dims, recon PSNR "
                           f"{results['recon_psnr']:.1f} dB{realism}, {results['images_per_second']:.0f} img/s")
    return results

