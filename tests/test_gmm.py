"""The EM Gaussian mixture: finds clusters, picks its size on held-out data, samples reproducibly."""
from __future__ import annotations

import numpy as np

from stages import gmm

CENTRES = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])


def three_clusters(n_each: int = 200, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 0.3, (n_each, 2)) for c in CENTRES])


def test_fit_finds_every_cluster_and_beats_one_gaussian_on_new_points():
    mixture = gmm.fit(three_clusters(), seed=0)
    fresh = three_clusters(seed=2)

    assert 3 <= mixture.components <= 20
    nearest = np.linalg.norm(mixture.means[:, None] - CENTRES[None], axis=2).argmin(1)
    assert set(nearest) == {0, 1, 2}
    single = gmm.em(three_clusters(), 1, "full")
    assert mixture.log_likelihood(fresh).mean() > single.log_likelihood(fresh).mean() + 1.0


def test_samples_land_in_the_clusters_in_their_proportions():
    mixture = gmm.fit(three_clusters(), seed=0)

    points = mixture.sample(3000, seed=5)

    assert points.shape == (3000, 2) and points.dtype == np.float32
    distance = np.linalg.norm(points[:, None] - CENTRES[None], axis=2)
    assert np.mean(distance.min(1) < 1.2) > 0.97
    assert np.allclose(np.bincount(distance.argmin(1), minlength=3) / 3000, 1 / 3, atol=0.04)


def test_same_seed_same_mixture_and_samples():
    first, second = gmm.fit(three_clusters(), seed=4), gmm.fit(three_clusters(), seed=4)

    assert np.array_equal(first.means, second.means)
    assert np.array_equal(first.sample(10, seed=1), second.sample(10, seed=1))
    assert not np.array_equal(first.sample(10, seed=1), first.sample(10, seed=2))


def test_diagonal_fit_keeps_off_diagonal_covariance_zero():
    mixture = gmm.em(three_clusters(), 3, "diag")

    off_diagonal = mixture.covariances * (1 - np.eye(2))
    assert np.all(off_diagonal == 0)
