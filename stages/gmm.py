"""A Gaussian mixture fitted by EM in NumPy: the ex-post density of a VAE's latent codes (Ghosh et al. 2020).

A VAE's posterior means rarely fill N(0, I): sampling the prior then decodes codes from regions no training face
maps to. Fitting a mixture to the training set's posterior means and sampling it instead keeps samples where the
faces are. `fit` chooses the number of components (<= 20) and full or diagonal covariance by the log-likelihood of
a held-out tenth of the codes, then refits the winner on all of them; `GaussianMixture.sample(n, seed)` draws.
Deterministic: the same codes and seed give the same mixture and the same samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMPONENTS = (1, 2, 5, 10, 20)
COVARIANCES = ("full", "diag")
HELD_OUT = 0.1
ITERATIONS = 60
TOLERANCE = 1e-4  # stop when the mean log-likelihood gains less than this (nats per point)
REGULARISATION = 1e-4  # added to every variance, relative to the data's mean variance: no component collapses


@dataclass(frozen=True)
class GaussianMixture:
    """weights (K,), means (K, D), covariances (K, D, D); a diagonal fit stores its diagonal as full matrices."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance: str

    @property
    def components(self) -> int:
        return len(self.weights)

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) log density of each point under the mixture."""
        return _logsumexp(_component_log_densities(x, self), axis=1)

    def sample(self, n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
        """(n, D) float32 points drawn from the mixture."""
        rng = np.random.default_rng(seed)
        which = rng.choice(self.components, size=n, p=self.weights)
        noise = rng.standard_normal((n, self.means.shape[1]))
        roots = np.linalg.cholesky(self.covariances)  # (K, D, D)
        points = self.means[which] + np.einsum("nij,nj->ni", roots[which], noise)
        return points.astype(np.float32)

    def describe(self) -> str:
        return f"{self.components} {self.covariance}-covariance components"


def fit(x: np.ndarray, seed: int = 0, components: tuple[int, ...] = COMPONENTS,
        covariances: tuple[str, ...] = COVARIANCES) -> GaussianMixture:
    """The mixture, among `components` x `covariances`, that best predicts a held-out tenth of `x`, refitted on
    all of `x`. Sizes larger than a tenth of the fitting points are skipped: they would fit noise."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    held = max(1, int(round(len(x) * HELD_OUT)))
    fitting, held_out = x[order[held:]], x[order[:held]]
    usable = [k for k in components if k == 1 or k <= len(fitting) // 10]
    best = max(((k, cov) for k in usable for cov in covariances),
               key=lambda choice: em(fitting, *choice, seed=seed).log_likelihood(held_out).mean())
    return em(x, *best, seed=seed)


def em(x: np.ndarray, components: int, covariance: str, seed: int = 0) -> GaussianMixture:
    """Expectation-maximisation from a k-means++ start, for at most ITERATIONS steps."""
    x = np.asarray(x, dtype=np.float64)
    regularisation = REGULARISATION * x.var(0).mean()
    rng = np.random.default_rng(seed)
    start = _kmeans_plus_plus(x, components, rng)
    nearest = ((x[:, None, :] - start[None]) ** 2).sum(-1).argmin(1)
    responsibilities = np.eye(components)[nearest]  # (N, K)
    mixture, previous = None, -np.inf
    for _ in range(ITERATIONS):
        mixture = _maximise(x, responsibilities, covariance, regularisation)
        log_densities = _component_log_densities(x, mixture)  # (N, K)
        total = _logsumexp(log_densities, axis=1)
        responsibilities = np.exp(log_densities - total[:, None])
        if total.mean() - previous < TOLERANCE:
            break
        previous = total.mean()
    return mixture


def _maximise(x: np.ndarray, responsibilities: np.ndarray, covariance: str, regularisation: float):
    counts = responsibilities.sum(0) + 1e-10  # (K,)
    means = responsibilities.T @ x / counts[:, None]  # (K, D)
    covariances = []
    for r, mean, count in zip(responsibilities.T, means, counts):
        centred = x - mean  # (N, D)
        if covariance == "full":
            covariances.append((centred * r[:, None]).T @ centred / count)
        else:
            covariances.append(np.diag(r @ centred ** 2 / count))
    covariances = np.stack(covariances) + regularisation * np.eye(x.shape[1])
    return GaussianMixture(counts / counts.sum(), means, covariances, covariance)


def _component_log_densities(x: np.ndarray, mixture: GaussianMixture) -> np.ndarray:
    """(N, D) -> (N, K): log(weight_k) + log N(x | mean_k, covariance_k)."""
    x = np.asarray(x, dtype=np.float64)
    columns = []
    for weight, mean, cov in zip(mixture.weights, mixture.means, mixture.covariances):
        root = np.linalg.cholesky(cov)
        whitened = (x - mean) @ np.linalg.inv(root).T  # (N, D)
        log_det = 2 * np.log(np.diag(root)).sum()
        columns.append(np.log(weight) - 0.5 * ((whitened ** 2).sum(1) + log_det + x.shape[1] * np.log(2 * np.pi)))
    return np.stack(columns, axis=1)


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    distances = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = distances.sum()
        centres.append(x[rng.choice(len(x), p=distances / total if total > 0 else None)])
        distances = np.minimum(distances, ((x - centres[-1]) ** 2).sum(1))
    return np.stack(centres)
