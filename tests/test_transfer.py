"""Maps between residual streams and transferred directions: planted relations, the mean-difference property, files, bad input."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
import workbench.activations
from workbench.directions import direction_from_activations
from workbench.errors import DatasetError, LayerError, ShapeError, VectorFileError, WorkbenchError
from workbench.transfer import fit_map_from_activations, match_from_activations, random_like

TITLE = "detectable_format:title"
WIDE = 96  # the twin's width; tiny-random-llama has 64


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 3-layer random-weight Qwen2 twin of width 96 (tiny-random-llama: 4 layers x 64)."""
    from workbench.models.twins import build_twin

    return wb.load_model(str(build_twin("qwen2", tmp_path_factory.mktemp("twins") / "qwen2-w96", hidden_size=WIDE)), device="cpu")


@pytest.fixture(scope="module")
def texts():
    """Fit texts: train prompts of instructions other than the title (the transferred one)."""
    rows = wb.load_pairs("format", split="train")
    return list(dict.fromkeys(r.prompt for r in rows if r.instruction_id != TITLE))[:24]


def _no_work(monkeypatch):
    """Fail the test if any activation is computed (bad input must be refused before)."""
    def boom(*a, **k):
        raise AssertionError("activations were computed before the bad input was refused")
    monkeypatch.setattr(workbench.activations, "collect_activations", boom)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


SRC, TGT = ("a", 2, 4), ("b", 1, 3)


# --- fitting --------------------------------------------------------------------------------
def test_affine_map_recovers_a_planted_relation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=g) * 3 + 5
    a, b = torch.randn(64, WIDE, generator=g) / 8, torch.randn(WIDE, generator=g)
    y = x @ a + b + 0.01 * torch.randn(300, WIDE, generator=g)
    m = fit_map_from_activations(x, y, kind="affine", source=SRC, target=TGT)
    assert m.metrics["r2"] > 0.999 and m.metrics["centred_cosine"] > 0.999
    assert m.metrics["n_fit"] == 240 and m.metrics["n_heldout"] == 60
    assert torch.allclose(m.weight, a, atol=2e-3) and torch.allclose(m.bias, b, atol=0.05)
    assert m.regularisation["chosen_on"].startswith("inner") and m.regularisation["ridge"] in (1e-4, 1e-3, 1e-2)
    # unrelated activations: the held-out fit says so
    noise = fit_map_from_activations(x, torch.randn(300, WIDE, generator=g), kind="affine", source=SRC, target=TGT)
    assert noise.metrics["r2"] < 0.05


def test_orthogonal_map_recovers_a_planted_scaled_rotation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 64, generator=g) + 2
    q, _ = torch.linalg.qr(torch.randn(WIDE, 64, generator=g))  # [96, 64], orthonormal columns
    y = 2.5 * x @ q.T + 1.0
    m = fit_map_from_activations(x, y, kind="orthogonal", source=SRC, target=TGT)
    assert m.metrics["r2"] > 0.9999 and m.regularisation["scale"] == pytest.approx(2.5, rel=1e-4)
    assert torch.allclose(m.weight, 2.5 * q.T, atol=1e-4)
    v = torch.randn(64, generator=g)
    assert float(m.map_vector(v).norm()) == pytest.approx(2.5 * float(v.norm()), rel=1e-4)  # angles and norms kept up to the scale


def test_identity_refuses_mismatched_widths(tiny, wide, texts, monkeypatch):
    with pytest.raises(ShapeError, match="identity map needs equal widths"):
        fit_map_from_activations(torch.zeros(20, 64), torch.zeros(20, WIDE), kind="identity", source=SRC, target=TGT)
    _no_work(monkeypatch)
    with pytest.raises(ShapeError) as exc:
        wb.fit_map(tiny, wide, texts, source_layer=1, target_layer=1, kind="identity")
    assert "64" in _one_line(exc) and "96" in str(exc.value)
    with pytest.raises(ShapeError):
        wb.ResidualMap(weight=torch.zeros(64, WIDE), bias=torch.zeros(WIDE), kind="identity", source_model="a",
                       target_model="b", source_layer=0, target_layer=0, n_source_layers=4, n_target_layers=3)


def test_identity_map_on_the_same_model_is_exact(tiny, texts):
    m = wb.fit_map(tiny, tiny, texts, source_layer=2, target_layer=2, kind="identity")
    assert m.metrics["r2"] == pytest.approx(1.0) and torch.equal(m.weight, torch.eye(64))


# --- transferred directions -------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_transferred_direction_is_the_mean_difference_of_mapped_pairs(seed):
    """For any maps and pair activations: transfer(direction) == mean(map(with) - map(without)) at every mapped layer."""
    g = torch.Generator().manual_seed(seed)
    n, layers = int(torch.randint(3, 12, (1,), generator=g)), [0, 2, 3]
    with_acts, without_acts = torch.randn(n, 3, 64, generator=g) + 1, torch.randn(n, 3, 64, generator=g)
    d = direction_from_activations(with_acts, without_acts, layers=layers, name="t", model_name="a", n_model_layers=4)
    fits = {}
    for s, t in ((2, 0), (3, 2), (0, 1)):
        x, y = torch.randn(40, 64, generator=g), torch.randn(40, WIDE, generator=g)
        kind = ("affine", "orthogonal")[(s + seed) % 2]
        fits[(s, t)] = fit_map_from_activations(x, y @ torch.eye(WIDE) + 3, kind=kind, source=("a", s, 4), target=("b", t, 3),
                                                ridge=0.1 if kind == "affine" else None)
    maps = list(fits.values())
    out = wb.transfer_direction(d, maps)
    full = wb.transfer_direction(d, maps, pair_activations=(with_acts, without_acts))
    assert out.layers == full.layers == (0, 1, 2) and out.model_name == "b" and out.d_model == WIDE and out.n_model_layers == 3
    for (s, t), m in fits.items():
        i = layers.index(s)
        mapped_diff = (m(with_acts[:, i]) - m(without_acts[:, i])).mean(0)
        assert torch.allclose(out.at(t).vector, mapped_diff, atol=1e-4)
        assert torch.allclose(full.at(t).vector, mapped_diff, atol=1e-4)
        assert full.at(t).proj_with == pytest.approx(float((m(with_acts[:, i]) @ full.at(t).unit).mean()), abs=1e-3)
    prov = out.extra["transfer"]
    assert prov["source_model"] == "a" and prov["source_direction"] == "t"
    assert [(p["source_layer"], p["target_layer"]) for p in prov["layers"]] == [(2, 0), (0, 1), (3, 2)]
    null = random_like(full, seed=0, without_acts=torch.randn(n, 3, WIDE, generator=g))
    assert torch.allclose(null.norms, full.norms) and torch.allclose(null.proj_with - null.proj_without, full.proj_with - full.proj_without)


def test_transfer_between_real_models_of_different_widths(tiny, wide, texts):
    match = wb.match_layers(tiny, wide, texts)
    assert match.r2.shape == (4, 3) and match.n_fit + match.n_heldout == len(texts)
    pairs = match.pairs("target")
    assert [t for _, t in pairs] == [0, 1, 2] and len(match.rows()) == 12
    assert [t for _, t in match.pairs("depth")] == [0, 1, 2] and match.pairs("depth")[-1][0] == 3
    title = wb.compute_direction(tiny, wb.load_pairs("format", TITLE, split="train").head(4), progress=False)
    moved = wb.transfer_direction(title, match.maps_for())
    assert moved.d_model == WIDE and moved.layers == (0, 1, 2) and moved.model_name == wb.model_info(wide).name
    moved.check_compatible(wide)
    with wb.steer(wide, moved, layer=1, mode="add", coeff=2.0):
        assert len(wb.generate(wide, ["Hi."], max_new_tokens=2)) == 1
    fig = match.figure()
    assert fig.data[0].z is not None and len(fig.data[0].z) == 4


def test_transfer_direction_refuses_maps_of_another_model():
    d = direction_from_activations(torch.randn(3, 2, 64) + 1, torch.randn(3, 2, 64), layers=[0, 1], name="t", model_name="a",
                                   n_model_layers=4)
    x, y = torch.randn(20, 64), torch.randn(20, WIDE)
    other = fit_map_from_activations(x, y, source=("z", 0, 4), target=TGT, ridge=1.0)
    with pytest.raises(ShapeError, match="starts at z"):
        wb.transfer_direction(d, [other])
    unmapped = fit_map_from_activations(x, y, source=("a", 3, 4), target=TGT, ridge=1.0)
    with pytest.raises(LayerError, match="no vector there"):
        wb.transfer_direction(d, unmapped)
    twice = [fit_map_from_activations(x, y, source=("a", s, 4), target=TGT, ridge=1.0) for s in (0, 1)]
    with pytest.raises(LayerError, match="one map per target layer"):
        wb.transfer_direction(d, twice)


# --- files ------------------------------------------------------------------------------------
def test_map_file_round_trips(tiny, wide, texts, tmp_path):
    m = wb.fit_map(tiny, wide, texts, source_layer=3, target_layer=2, ridge=0.1, exclude=wb.load_pairs("format", TITLE))
    m.save(tmp_path / "map.safetensors")
    back = wb.ResidualMap.load(tmp_path / "map.safetensors", source=tiny, target=wide)
    assert torch.equal(back.weight, m.weight) and torch.equal(back.bias, m.bias)
    assert back.metadata() == m.metadata()
    assert (back.source_model, back.target_model, back.source_layer, back.target_layer) == ("tiny-random-llama", "qwen2-w96", 3, 2)
    assert back.regularisation["ridge"] == 0.1 and back.regularisation["chosen_on"] == "given"
    assert back.metrics["n_fit"] + back.metrics["n_heldout"] == len(texts)
    wb.save_maps(tmp_path / "maps.safetensors", [m, m])
    assert len(wb.load_maps(tmp_path / "maps.safetensors")) == 2
    with pytest.raises(VectorFileError, match="holds 2 maps"):
        wb.ResidualMap.load(tmp_path / "maps.safetensors")


# --- bad input: one line, before any work -------------------------------------------------------
def test_map_file_of_other_models_is_refused(tiny, wide, tmp_path):
    m = fit_map_from_activations(torch.randn(20, 64), torch.randn(20, WIDE), source=("tiny-random-llama", 1, 4),
                                 target=("qwen2-w96", 1, 3), ridge=1.0)
    m.save(tmp_path / "map.safetensors")
    with pytest.raises(ShapeError) as exc:  # swapped: the file's source is this run's target
        wb.load_maps(tmp_path / "map.safetensors", source=wide, target=tiny)
    assert "its source is tiny-random-llama (4 layers x 64)" in _one_line(exc)
    wrong_layers = fit_map_from_activations(torch.randn(20, 64), torch.randn(20, WIDE), source=("tiny-random-llama", 1, 30),
                                            target=("qwen2-w96", 1, 3), ridge=1.0)
    wrong_layers.save(tmp_path / "layers.safetensors")
    with pytest.raises(ShapeError, match="30 layers"):
        wb.load_maps(tmp_path / "layers.safetensors", source=tiny, target=wide)
    with pytest.raises(VectorFileError):
        wb.load_maps(tmp_path / "missing.safetensors")


def test_bad_fit_requests_are_refused_before_any_work(tiny, wide, texts, monkeypatch):
    _no_work(monkeypatch)
    with pytest.raises(DatasetError) as exc:
        wb.fit_map(tiny, wide, texts[:9], source_layer=1, target_layer=1)
    assert "at least 10 distinct fit texts" in _one_line(exc)
    with pytest.raises(LayerError) as exc:
        wb.fit_map(tiny, wide, texts, source_layer=4, target_layer=1)
    assert "source_layer 4 is out of range: tiny-random-llama has layers 0..3" == _one_line(exc)
    with pytest.raises(LayerError, match="target_layer 3 is out of range: qwen2-w96 has layers 0..2"):
        wb.fit_map(tiny, wide, texts, source_layer=0, target_layer=3)
    with pytest.raises(LayerError, match="target_layer 5"):
        wb.match_layers(tiny, wide, texts, target_layers=[0, 5])
    title = wb.load_pairs("format", TITLE, split="train").head(3)
    with pytest.raises(DatasetError) as exc:  # the leak: fitting on the pairs being transferred
        wb.fit_map(tiny, wide, [*texts, title[0].prompt], source_layer=1, target_layer=1, exclude=title)
    assert "belong to the pairs being transferred" in _one_line(exc)
    with pytest.raises(WorkbenchError, match="unknown map kind"):
        wb.fit_map(tiny, wide, texts, source_layer=1, target_layer=1, kind="mlp")
    with pytest.raises(WorkbenchError, match="heldout"):
        wb.fit_map(tiny, wide, texts, source_layer=1, target_layer=1, heldout=1.5)


def test_same_model_with_a_learned_map_is_allowed_but_says_so(tiny, texts):
    with pytest.warns(UserWarning, match="same model"):
        m = wb.fit_map(tiny, tiny, texts, source_layer=1, target_layer=2, kind="orthogonal")
    assert m.extra["same_model"] is True


def test_match_from_activations_pairs_layers_by_fit():
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(60, 3, 16, generator=g)
    ys = torch.stack([xs[:, 2] @ torch.randn(16, 24, generator=g), xs[:, 0] @ torch.randn(16, 24, generator=g)], 1)
    match = match_from_activations(xs, ys, source=("a", [0, 1, 2], 3), target=("b", [0, 1], 2), ridge=1e-3)
    assert match.pairs("target") == [(2, 0), (0, 1)] and match.best_source() == {0: 2, 1: 0}
    assert float(match.r2[2, 0]) > 0.99 and float(match.r2[1, 0]) < 0.2


def test_linear_cka_against_the_feature_space_formula_and_its_invariances():
    """CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) (Kornblith et al. 2019, eq. 5), computed here from the
    features; 1 under an orthogonal map with scaling and a shift; near 0 for independent noise; the match table's
    ``cka`` is the same number."""
    from workbench.transfer import linear_cka

    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(50, 12, generator=g, dtype=torch.float64), torch.randn(50, 20, generator=g, dtype=torch.float64)
    y = y + x @ torch.randn(12, 20, generator=g, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = (torch.linalg.matrix_norm(yc.T @ xc) ** 2
                / (torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)))
    assert linear_cka(x, y) == pytest.approx(float(expected), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-9)
    noise = torch.randn(2000, 8, generator=g, dtype=torch.float64), torch.randn(2000, 8, generator=g, dtype=torch.float64)
    assert linear_cka(*noise) < 0.05
    match = match_from_activations(torch.stack([x.float(), x.float()], 1), y.float()[:, None], source=("a", [0, 1], 2),
                                   target=("b", [0], 1), ridge=1e-3)
    assert float(match.cka[0, 0]) == pytest.approx(float(expected), rel=1e-5)
    assert match.rows()[0]["cka"] == pytest.approx(float(expected), abs=1e-4)
    with pytest.raises(WorkbenchError, match="same n >= 2 rows"):
        linear_cka(x, y[:10])


# --- reproduce transfer between models of different widths ---------------------------------------
def test_reproduce_transfer_quick_between_widths(tiny, wide, tmp_path, one_thread):
    import argparse
    import csv
    import json

    from workbench.experiments.cli import register

    parser = argparse.ArgumentParser(prog="workbench")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "results"
    folder = wb.model_info(wide).path
    args = parser.parse_args(["reproduce", "transfer", "--model", str(folder), "--source-model", "tiny-random-llama", "--quick",
                              "--device", "cpu", "--out", str(out), "--n-train", "4", "--n-val", "4", "--n-eval", "4",
                              "--max-new-tokens", "4", "--map-prompts", "20", "--instruction", TITLE, "--mode", "add",
                              "--rule", "paper", "--max-ppl-ratio", "none"])  # random weights: select a cell whatever it scores
    assert args.func(args) == 0
    run_dir = out / "qwen2-w96" / "transfer"
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert {r["direction"] for r in rows} <= {"none", "transferred", "own", "random"}
    by = {(r["direction"], r["condition"]) for r in rows}
    assert {("none", "instruction"), ("none", "no_instruction")} <= by
    for label in ("transferred", "own", "random"):  # B steered with each direction, both steered conditions
        assert {(label, "instruction_steered"), (label, "no_instruction_steered")} <= by, label
    steered = [r for r in rows if r["direction"] in ("transferred", "random")]  # the null at the transferred direction's cell
    assert len({(r["layer"], r["strength"]) for r in steered}) == 1
    assert all(r["accuracy_p"] != "" and r["rule"] in ("both", "workbench", "paper") for r in rows if r["condition"].endswith("_steered"))
    cos = list(csv.DictReader((run_dir / "transfer_cosine.csv").open()))
    assert [int(r["target_layer"]) for r in cos] == [2] and cos[0]["n_fit"] == "16"
    assert len(list(csv.DictReader((run_dir / "layer_match.csv").open()))) == 4  # 4 source layers x the 1 quick target layer
    maps = wb.load_maps(run_dir / "maps.safetensors", source=tiny, target=wide)
    assert [(m.kind, m.target_layer) for m in maps] == [("affine", 2)]
    d = wb.Direction.load(run_dir / "directions" / "detectable_format_title.safetensors", model=wide)
    assert d.extra["transfer"]["source_model"] == "tiny-random-llama" and d.d_model == WIDE
    config = json.loads((run_dir / "config.json").read_text())
    assert any("other than detectable_format:title (their pairs excluded)" in n for n in config["notes"])
    assert (run_dir / "figures" / "layer_match.html").is_file() and (run_dir / "figures" / "transfer_conditions.html").is_file()


def test_identity_map_gives_todays_transfer_rows(tiny, tmp_path, one_thread):
    import csv

    from workbench.experiments.reproduce import ReproduceConfig, run_reproduce

    kw = dict(model="tiny-random-llama", quick=True, n_train=4, n_val=4, n_eval=4, max_new_tokens=4, instructions=[TITLE],
              mode="add", rule="paper", max_ppl_ratio=None, map_prompts=None)
    today = run_reproduce(ReproduceConfig("transfer", out=str(tmp_path / "today"), **kw), say=lambda s: None, model=tiny)
    mapped = run_reproduce(ReproduceConfig("transfer", out=str(tmp_path / "mapped"), map="identity", **{**kw, "map_prompts": 12}),
                           say=lambda s: None, model=tiny)
    keys = ("condition", "n", "accuracy", "loose_accuracy", "perplexity", "layer", "strength", "mode")
    old = [tuple(r[k] for k in keys) for r in csv.DictReader((today / "results.csv").open())]
    new = [tuple(r[k] for k in keys) for r in csv.DictReader((mapped / "results.csv").open()) if r["direction"] in ("none", "transferred")]
    assert len(old) == 4 and sorted(old) == sorted(new)
    cos = list(csv.DictReader((mapped / "transfer_cosine.csv").open()))
    assert float(cos[0]["cos_transferred_own"]) == pytest.approx(1.0) and float(cos[0]["map_r2"]) == pytest.approx(1.0)


def test_reproduce_transfer_refuses_bad_map_options_before_any_work(tiny, wide, tmp_path, monkeypatch):
    from workbench.experiments.reproduce import ReproduceConfig, run_reproduce

    other = fit_map_from_activations(torch.randn(20, 64), torch.randn(20, WIDE), source=("tiny-random-llama", 1, 4),
                                     target=("qwen2-w96", 1, 3), ridge=1.0)
    other.save(tmp_path / "other.safetensors")
    _no_work(monkeypatch)
    monkeypatch.setattr("workbench.experiments.run.collect_activations", workbench.activations.collect_activations)
    kw = dict(model="tiny-random-llama", quick=True, out=str(tmp_path / "out"), n_train=4, n_val=4, n_eval=4, instructions=[TITLE])
    with pytest.raises(ShapeError) as exc:  # a map file fitted for another target model
        run_reproduce(ReproduceConfig("transfer", map=str(tmp_path / "other.safetensors"), **kw), say=lambda s: None, model=tiny)
    assert "its target is qwen2-w96 (3 layers x 96)" in _one_line(exc)
    with pytest.raises(WorkbenchError, match="not one of affine, orthogonal, identity and no such map file"):
        run_reproduce(ReproduceConfig("transfer", map="nonsense", **kw), say=lambda s: None, model=tiny)
    with pytest.raises(ShapeError, match="--map identity needs equal widths; qwen2-w96 has d_model 96, tiny-random-llama 64"):
        run_reproduce(ReproduceConfig("transfer", map="identity", source_model=str(wb.model_info(wide).path), **kw),
                      say=lambda s: None, model=tiny)
    with pytest.raises(WorkbenchError, match="--map-prompts: a map needs at least 10 fit texts, got 5"):
        run_reproduce(ReproduceConfig("transfer", map="affine", map_prompts=5, **kw), say=lambda s: None, model=tiny)


def test_layer_match_reuses_each_source_layers_svd_without_changing_a_fit():
    g = torch.Generator().manual_seed(4)
    xs, ys = torch.randn(40, 2, 16, generator=g), torch.randn(40, 3, 24, generator=g)
    ys[:, 1] = xs[:, 0] @ torch.randn(16, 24, generator=g) + 0.1 * ys[:, 1]
    match = match_from_activations(xs, ys, source=("a", [0, 1], 2), target=("b", [0, 1, 2], 3))
    for (s, t), m in match.maps.items():
        alone = fit_map_from_activations(xs[:, s], ys[:, t], source=("a", s, 2), target=("b", t, 3))
        assert torch.allclose(m.weight, alone.weight, atol=1e-6) and m.metrics == alone.metrics
        assert m.regularisation == alone.regularisation


def test_transfer_cosines_name_each_layer_and_its_map():
    """transfer_cosines: the cosine with the own direction per target layer, the null's beside it, the map's fit."""
    g = torch.Generator().manual_seed(3)
    with_acts, without_acts = torch.randn(6, 2, 64, generator=g) + 1, torch.randn(6, 2, 64, generator=g)
    d = direction_from_activations(with_acts, without_acts, layers=[1, 3], name="t", model_name="a", n_model_layers=4)
    maps = [fit_map_from_activations(torch.randn(30, 64, generator=g), torch.randn(30, WIDE, generator=g), source=("a", s, 4),
                                     target=("b", t, 3), ridge=0.1) for s, t in ((3, 2), (1, 0))]
    moved = wb.transfer_direction(d, maps)
    own = direction_from_activations(torch.randn(6, 3, WIDE, generator=g) + 1, torch.randn(6, 3, WIDE, generator=g), layers=[0, 1, 2],
                                     name="t", model_name="b", n_model_layers=3)
    null = random_like(moved, seed=0)
    rows = wb.transfer.transfer_cosines(moved, own, null)
    assert [(r["target_layer"], r["source_layer"]) for r in rows] == [(0, 1), (2, 3)]
    for r in rows:
        want = torch.nn.functional.cosine_similarity(moved.at(r["target_layer"]).vector, own.at(r["target_layer"]).vector, dim=0)
        assert r["cos_transferred_own"] == pytest.approx(float(want), abs=1e-4) and r["cos_random_own"] is not None
        m = next(m for m in maps if m.target_layer == r["target_layer"])
        assert (r["map_r2"], r["n_fit"], r["n_heldout"]) == (m.metrics["r2"], m.metrics["n_fit"], m.metrics["n_heldout"])
    assert wb.transfer.transfer_cosines(moved, own)[0]["cos_random_own"] is None
    from workbench.transfer.figures import cosine_figure
    assert len(cosine_figure(rows).data) == 2 and len(cosine_figure(wb.transfer.transfer_cosines(moved, own)).data) == 1
    with pytest.raises(ShapeError, match="transfer_cosines"):
        wb.transfer.transfer_cosines(moved, d)
    with pytest.raises(LayerError, match="no vector at layer"):
        wb.transfer.transfer_cosines(moved, direction_from_activations(torch.randn(6, 1, WIDE) + 1, torch.randn(6, 1, WIDE),
                                                                       layers=[0], name="t", model_name="b", n_model_layers=3))


def test_reproduce_transfer_of_a_keyword_between_widths(tiny, wide, tmp_path, one_thread):
    """``--word W`` alone transfers W's inclusion direction (add mode) through maps fitted on format prompts only."""
    import csv
    import json

    from workbench.experiments.reproduce import ReproduceConfig, run_reproduce

    cfg = ReproduceConfig("transfer", model=str(wb.model_info(wide).path), source_model="tiny-random-llama", quick=True,
                          words=["ocean"], n_train=4, n_val=4, n_eval=4, max_new_tokens=4, map_prompts=20, rule="paper",
                          max_ppl_ratio=None, device="cpu", out=str(tmp_path / "r"))
    out = run_reproduce(cfg, say=lambda s: None, model=wide)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["instruction_id"] for r in rows} == {"include:ocean"}
    assert {r["direction"] for r in rows} == {"none", "transferred", "own", "random"}
    assert {r["mode"] for r in rows if r["direction"] != "none"} == {"add"}
    notes = json.loads((out / "config.json").read_text())["notes"]
    assert any("format instructions (no keyword prompt among them, so none of the transferred pairs)" in n for n in notes), notes
    d = wb.Direction.load(out / "directions" / "include_ocean.safetensors", model=wide)
    assert d.extra["transfer"]["source_model"] == "tiny-random-llama"
    same = run_reproduce(ReproduceConfig("transfer", model="tiny-random-llama", quick=True, words=["ocean"], n_train=4, n_val=4,
                                         n_eval=4, max_new_tokens=4, rule="paper", max_ppl_ratio=None, out=str(tmp_path / "s")),
                         say=lambda s: None, model=tiny)  # same shape: today's tables, for the keyword
    assert {r["instruction_id"] for r in csv.DictReader((same / "results.csv").open())} == {"include:ocean"}
