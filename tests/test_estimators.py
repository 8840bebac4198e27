"""Direction estimators (workbench/estimators.py): planted directions recovered, mean bit for bit, signs, the null."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
import workbench.directions as directions_module
from workbench.directions import direction_from_activations
from workbench.errors import DatasetError
from workbench.estimators import METHODS, estimate
from workbench.figures import method_cosine, method_cosine_figure

TITLE = "detectable_format:title"
REAL = ("mean", "pca", "probe", "whitened")


def planted(n: int = 240, n_layers: int = 3, d: int = 16, seed: int = 0):
    """Pairs whose difference is a planted unit direction per layer (times 2) plus small isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n_layers, d, generator=g)
    v = v / v.norm(dim=-1, keepdim=True)
    without = torch.randn(n, n_layers, d, generator=g)
    with_ = without + 2.0 * v + 0.3 * torch.randn(n, n_layers, d, generator=g)
    return with_, without, v


def _direction(w, wo, method, seed=0):
    return direction_from_activations(w, wo, layers=range(w.shape[1]), name="t", model_name="synthetic",
                                      n_model_layers=w.shape[1], method=method, seed=seed)


@pytest.mark.parametrize("method", REAL)
def test_every_estimator_recovers_a_planted_direction(method):
    # 2,000 pairs in 16 dimensions: the probe converges slowest (cosine 0.97 at 240 pairs, 0.99 at 1,000)
    w, wo, v = planted(n=2000)
    d = _direction(w, wo, method)
    cos = (d.units.double() * v.double()).sum(-1)
    assert float(cos.min()) > 0.99, cos
    assert d.extra["estimator"]["method"] == method


def test_mean_is_todays_direction_bit_for_bit(tiny, tiny_pairs):
    w, wo, _ = planted()
    assert torch.equal(_direction(w, wo, "mean").vectors, (w - wo).mean(0))
    d = wb.compute_direction(tiny, tiny_pairs, progress=False)
    a, b = directions_module.pair_activations(tiny, tiny_pairs, progress=False)
    assert torch.equal(d.vectors, (a - b).mean(0)) and d.extra["estimator"] == {"method": "mean"}


@pytest.mark.parametrize("method", REAL)
def test_sign_convention_positive_projection_means_with_the_instruction(method):
    w, wo, _ = planted(n=60, seed=3)
    d = _direction(w, wo, method)
    along = torch.einsum("nld,ld->l", w - wo, d.units)
    assert bool((along > 0).all()) and bool((d.proj_with > d.proj_without).all())
    swapped = _direction(wo, w, method)  # the same data read the other way round flips the direction
    assert float((swapped.units * d.units).sum(-1).max()) < -0.99
    # the norm is the mean projection of the differences on the unit direction (mean: the mean difference's norm)
    assert torch.allclose(d.vectors.norm(dim=-1), along / w.shape[0], rtol=1e-4)


def test_random_is_seeded_with_the_mean_directions_norm():
    w, wo, v = planted(n=30)
    a, b, c = (_direction(w, wo, "random", seed=s) for s in (7, 7, 8))
    assert torch.equal(a.vectors, b.vectors) and not torch.equal(a.vectors, c.vectors)
    assert torch.allclose(a.vectors.norm(dim=-1), (w - wo).mean(0).norm(dim=-1), rtol=1e-5)
    assert float((a.units * v).sum(-1).abs().max()) < 0.9  # not the planted direction
    assert a.extra["estimator"] == {"method": "random", "seed": 7}


def test_whitened_shrinks_a_singular_covariance_and_says_by_how_much():
    w, wo, v = planted(n=6, d=64)  # 12 samples in 64 dimensions: the sample covariance is singular
    vectors, params = estimate(w, wo, "whitened")
    assert torch.isfinite(vectors).all() and len(params["shrinkage"]) == 3
    assert all(0 < s <= 1 for s in params["shrinkage"]) and "Ledoit-Wolf" in params["covariance"]


def test_one_activation_pass_serves_every_method(tiny, tiny_pairs, monkeypatch):
    calls = []
    real = directions_module.pair_activations
    monkeypatch.setattr(directions_module, "pair_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    by = wb.compute_directions_by_method(tiny, tiny_pairs, progress=False)
    assert len(calls) == 1 and list(by) == list(METHODS)
    assert torch.equal(by["mean"].vectors, wb.compute_direction(tiny, tiny_pairs, progress=False).vectors)
    layers, cos = method_cosine(by)
    assert layers == list(range(4)) and set(cos) == {"pca", "probe", "whitened", "random"}
    assert len(method_cosine_figure(by).data) == 4


def test_saved_direction_records_its_method(tmp_path):
    w, wo, _ = planted(n=12)
    d = _direction(w, wo, "probe")
    d.save(tmp_path / "p.safetensors")
    back = wb.Direction.load(tmp_path / "p.safetensors")
    assert back.extra["estimator"]["method"] == "probe" and back.extra["estimator"]["C"] == 1.0


def test_bad_methods_fail_in_one_line_before_any_work(tiny, tiny_pairs, monkeypatch):
    monkeypatch.setattr(directions_module, "pair_activations", lambda *a, **k: pytest.fail("activations were computed"))
    with pytest.raises(DatasetError, match="unknown direction method 'lda'; choose one of mean, pca, probe, whitened, random"):
        wb.compute_direction(tiny, tiny_pairs, method="lda")
    with pytest.raises(DatasetError, match="direction method 'probe' needs at least 4 pairs, got 2"):
        wb.compute_direction(tiny, tiny_pairs.head(2), method="probe")
    with pytest.raises(DatasetError, match="needs at least 4 pairs"):
        wb.compute_directions_by_method(tiny, tiny_pairs.head(3), ("mean", "whitened"))
