"""Directions: the difference-of-means arithmetic, projection statistics, persistence, checks."""

from __future__ import annotations

import types

import pytest
import torch
from safetensors.torch import save_file

import workbench as wb


@pytest.fixture
def directions(tiny, tiny_pairs):
    return wb.compute_directions(tiny, tiny_pairs, progress=False)


def test_direction_is_mean_of_differences(tiny, tiny_pairs, directions):
    title = directions["detectable_format:title"]
    rows = tiny_pairs.filter(instruction="detectable_format:title")
    w = wb.collect_activations(tiny, rows.prompts(), progress=False)
    wo = wb.collect_activations(tiny, rows.prompts_without_instruction(), progress=False)
    assert torch.allclose(title.vectors, (w - wo).mean(0), atol=1e-5)
    u = title.units[2]
    assert torch.isclose(title.proj_with[2], (w[:, 2] @ u).mean(), atol=1e-4)
    assert torch.isclose(title.proj_without[2], (wo[:, 2] @ u).mean(), atol=1e-4)
    # the projection gap equals the norm of the mean difference
    assert torch.allclose(title.proj_with - title.proj_without, title.norms, atol=1e-4)
    assert title.n_pairs == 3 and title.layers == (0, 1, 2, 3)
    assert set(directions) == {"detectable_format:title", "change_case:english_lowercase"}


def test_at_and_arithmetic(directions):
    a = directions["detectable_format:title"]
    b = directions["change_case:english_lowercase"]
    layer = a.at(2)
    assert layer.layer == 2 and torch.allclose(layer.unit.norm(), torch.tensor(1.0))
    assert torch.allclose((a + b).vectors, a.vectors + b.vectors)
    assert torch.allclose((a - b).vectors, a.vectors - b.vectors)
    assert torch.allclose((2 * a).vectors, 2 * a.vectors)
    neg = -a
    assert torch.allclose(neg.at(1).unit, -a.at(1).unit)
    assert neg.proj_with is not None and torch.allclose(neg.proj_with, -a.proj_with)
    assert (a + b).proj_with is None  # statistics of a sum are unknown
    with pytest.raises(wb.LayerError, match="has no layer 9"):
        a.at(9)


def test_save_load_round_trip(tiny, directions, tmp_path):
    a = directions["detectable_format:title"]
    a.save(tmp_path / "d.safetensors")
    b = wb.Direction.load(tmp_path / "d.safetensors", model=tiny)
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.proj_with, b.proj_with)
    assert b.model_name == "tiny-random-llama" and b.data_hash == a.data_hash and b.n_pairs == 3
    assert b.metadata()["workbench_version"] == wb.__version__


def test_load_into_incompatible_model_fails_clearly(directions, tmp_path):
    a = directions["detectable_format:title"]
    a.save(tmp_path / "d.safetensors")
    wide = types.SimpleNamespace(cfg=types.SimpleNamespace(d_model=128, n_layers=4))
    with pytest.raises(wb.ShapeError, match="d_model=64.*d_model=128"):
        wb.Direction.load(tmp_path / "d.safetensors", model=wide)
    shallow = types.SimpleNamespace(cfg=types.SimpleNamespace(d_model=64, n_layers=2))
    with pytest.raises(wb.LayerError, match="layers up to 3"):
        wb.Direction.load(tmp_path / "d.safetensors", model=shallow)


def test_corrupt_and_foreign_files(directions, tmp_path):
    path = tmp_path / "d.safetensors"
    directions["detectable_format:title"].save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(wb.VectorFileError):
        wb.Direction.load(path)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.ones(3)}, str(foreign))
    with pytest.raises(wb.VectorFileError, match="no workbench metadata"):
        wb.Direction.load(foreign)
    acts = tmp_path / "acts.safetensors"
    wb.save_activations(acts, torch.ones(2, 2))
    with pytest.raises(wb.VectorFileError, match="expected 'direction'"):
        wb.Direction.load(acts)


def test_nan_and_empty(tiny, directions):
    a = directions["detectable_format:title"]
    with pytest.raises(wb.SteeringError, match="NaN"):
        wb.Direction(vectors=torch.full((4, 64), float("nan")), layers=(0, 1, 2, 3), name="x",
                     model_name="m", d_model=64, n_model_layers=4)
    with pytest.raises(wb.ShapeError, match="expected"):
        wb.Direction(vectors=torch.ones(3, 64), layers=(0, 1, 2, 3), name="x", model_name="m",
                     d_model=64, n_model_layers=4)
    with pytest.raises(wb.DatasetError, match="empty"):
        wb.compute_directions(tiny, wb.PairDataset([]), progress=False)
    assert "tiny-random-llama" in repr(a)
