"""Estimators of an instruction direction from the same paired activations: the paper's mean difference and its peers.

Every estimator returns, per layer, a vector whose positive projection means "with the instruction" and whose norm is
the mean projection of the paired differences on its unit direction (for ``mean`` that is the mean difference itself,
bit for bit), so ``add``-mode strengths mean the same thing for every method.

>>> vectors, params = estimate(with_acts, without_acts, "probe")   # [n_layers, d_model], what was fitted
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float

from .errors import DatasetError

Acts = Float[torch.Tensor, "n n_layers d_model"]
Vectors = Float[torch.Tensor, "n_layers d_model"]

# method -> fewest pairs it is defined for (a probe or a covariance from two pairs is noise, not an estimate)
MIN_PAIRS: dict[str, int] = {"mean": 1, "pca": 2, "probe": 4, "whitened": 4, "random": 1}
METHODS: tuple[str, ...] = tuple(MIN_PAIRS)


def check_method(method: str, n_pairs: int) -> None:
    """Refuse an unknown method, or fewer pairs than it needs, in one line (before any activation is computed)."""
    if method not in MIN_PAIRS:
        raise DatasetError(f"unknown direction method {method!r}; choose one of {', '.join(METHODS)}")
    if n_pairs < MIN_PAIRS[method]:
        raise DatasetError(f"direction method {method!r} needs at least {MIN_PAIRS[method]} pairs, got {n_pairs}")


def _signed(units: Vectors, diffs: Acts) -> Vectors:
    """Unit directions turned so that the paired differences project positively, scaled by that mean projection."""
    along = torch.einsum("nld,ld->l", diffs, units) / diffs.shape[0]
    return units * along.unsqueeze(-1)  # a negative mean projection flips the direction; the norm is |along|


def _unit(v: Vectors) -> Vectors:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _mean(with_acts: Acts, without_acts: Acts, seed: int) -> tuple[Vectors, dict[str, Any]]:
    """The paper's estimator (Stolfo et al. 2025): the mean of the paired differences."""
    return (with_acts - without_acts).mean(0), {}


def _pca(with_acts: Acts, without_acts: Acts, seed: int) -> tuple[Vectors, dict[str, Any]]:
    """First principal component of the paired differences, uncentred (repeng's ``pca_diff``; Zou et al. 2023, RepE):
    the direction of largest mean squared difference."""
    diffs = (with_acts - without_acts).double()
    units, explained = [], []
    for layer in range(diffs.shape[1]):
        _, s, vh = torch.linalg.svd(diffs[:, layer], full_matrices=False)
        units.append(vh[0])
        explained.append(float(s[0] ** 2 / (s**2).sum().clamp_min(1e-30)))
    return _signed(torch.stack(units).to(with_acts.dtype), with_acts - without_acts), {"explained_variance": explained}


def _probe(with_acts: Acts, without_acts: Acts, seed: int, C: float = 1.0) -> tuple[Vectors, dict[str, Any]]:
    """Weights of an L2 logistic-regression probe separating with from without (the probing literature;
    Alain & Bengio 2016), on centred activations, fitted per layer with scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([with_acts, without_acts]).double().numpy()
    y = np.r_[np.ones(len(with_acts)), np.zeros(len(without_acts))]
    units, accuracy = [], []
    for layer in range(x.shape[1]):
        xs = x[:, layer] - x[:, layer].mean(0)
        scale = float(np.sqrt((xs**2).sum(1).mean())) or 1.0  # one scale per layer: C means the same at every depth
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(xs / scale, y)
        units.append(torch.from_numpy(clf.coef_[0].copy()))
        accuracy.append(float(clf.score(xs / scale, y)))
    return (_signed(_unit(torch.stack(units)).to(with_acts.dtype), with_acts - without_acts),
            {"C": C, "train_accuracy": accuracy})


def _whitened(with_acts: Acts, without_acts: Acts, seed: int) -> tuple[Vectors, dict[str, Any]]:
    """Covariance-whitened mean difference, ``Sigma^-1 (mu_with - mu_without)`` (Fisher's LDA), with the pooled
    within-class covariance shrunk by Ledoit-Wolf (scikit-learn): with fewer pairs than dimensions it is singular."""
    from sklearn.covariance import LedoitWolf

    units, shrinkage = [], []
    for layer in range(with_acts.shape[1]):
        a, b = with_acts[:, layer].double().numpy(), without_acts[:, layer].double().numpy()
        pooled = np.concatenate([a - a.mean(0), b - b.mean(0)])
        lw = LedoitWolf(assume_centered=True).fit(pooled)
        units.append(torch.from_numpy(np.linalg.solve(lw.covariance_, a.mean(0) - b.mean(0))))
        shrinkage.append(float(lw.shrinkage_))
    return (_signed(_unit(torch.stack(units)).to(with_acts.dtype), with_acts - without_acts),
            {"shrinkage": shrinkage, "covariance": "Ledoit-Wolf, pooled within-class"})


def _random(with_acts: Acts, without_acts: Acts, seed: int) -> tuple[Vectors, dict[str, Any]]:
    """A seeded random direction per layer with the mean direction's norm: the null every estimator should beat."""
    mean = (with_acts - without_acts).mean(0)
    g = torch.Generator().manual_seed(seed)
    units = _unit(torch.randn(mean.shape, generator=g, dtype=torch.float64)).to(mean.dtype)
    return units * mean.norm(dim=-1, keepdim=True), {"seed": seed}


ESTIMATORS: dict[str, Callable[..., tuple[Vectors, dict[str, Any]]]] = {
    "mean": _mean, "pca": _pca, "probe": _probe, "whitened": _whitened, "random": _random,
}


def estimate(with_acts: Acts, without_acts: Acts, method: str = "mean", seed: int = 0) -> tuple[Vectors, dict[str, Any]]:
    """Per-layer direction vectors of ``method`` from paired activations, and the parameters it used."""
    check_method(method, int(with_acts.shape[0]))
    vectors, params = ESTIMATORS[method](with_acts, without_acts, seed)
    return vectors, {"method": method, **params}
