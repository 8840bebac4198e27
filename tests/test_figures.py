"""Analysis figures: each figure's numbers checked on the tiny model, the records schema, exports and the CLI."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import workbench as wb
from workbench.directions import pair_activations
from workbench.errors import WorkbenchError
from workbench.figures import (
    CONDITIONS,
    RecordError,
    activation_pca,
    cluster_order,
    condition_table,
    conditions_figure,
    directions_from,
    find_chromium,
    instruction_activations,
    instruction_cosine,
    instruction_cosine_figure,
    layer_cosine,
    layer_cosine_figure,
    logit_lens_figure,
    pca_figure,
    pca_points,
    projection_figure,
    projections,
    save_figure,
    strength_curve,
    strength_figure,
    sweep_grid,
    sweep_heatmap_figure,
    token_html,
    token_projection_figure,
    token_projections,
    vocab_projection,
)
from workbench.figures.logit_lens import plot_text, token_label
from workbench.figures.png import distinct_colours, read_png


@pytest.fixture(scope="module")
def tiny_acts(tiny):
    """Pair activations of the two tiny-pairs instructions (each distinct prompt run once)."""
    rows = []
    queries = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern.", "List three fruits."]
    for iid, phrase in (("detectable_format:title", "Add a title in <<brackets>>."), ("change_case:english_lowercase", "Use only lowercase.")):
        for i, q in enumerate(queries):
            rows.append(wb.PairRow(
                prompt=f"{q} {phrase}", prompt_without_instruction=q, instruction_id=iid, kwargs={},
                base_id=f"q{i}", eval_instruction_ids=(iid,), eval_kwargs=({},), split="train",
            ))
    pairs = wb.PairDataset(rows, name="tiny")
    sets = {iid: pairs.filter(instruction=iid) for iid in pairs.instruction_ids()}
    acts = instruction_activations(tiny, sets)
    return pairs, sets, acts, directions_from(tiny, acts, pair_sets=sets)


# --- inputs -------------------------------------------------------------------------------
def test_instruction_activations_match_pair_activations(tiny, tiny_acts):
    _, sets, acts, dirs = tiny_acts
    for iid, pairs in sets.items():
        w, wo = pair_activations(tiny, pairs, progress=False)
        assert torch.allclose(acts[iid][0], w, atol=1e-5) and torch.allclose(acts[iid][1], wo, atol=1e-5)
        ref = wb.compute_direction(tiny, pairs, name=iid, progress=False)
        assert torch.allclose(dirs[iid].vectors, ref.vectors, atol=1e-5)
        assert dirs[iid].layers == ref.layers and dirs[iid].data_hash == ref.data_hash


# --- 1. projections -----------------------------------------------------------------------
def test_projection_figure_values(tiny_acts):
    _, _, acts, dirs = tiny_acts
    d = dirs["detectable_format:title"]
    w, wo = acts["detectable_format:title"]
    p = projections(d, w)
    assert torch.allclose(p, torch.einsum("nld,ld->nl", w, d.units), atol=1e-5)
    fig = projection_figure(d, w, wo)
    assert isinstance(fig, go.Figure) and len(fig.data) == 3
    assert np.allclose(fig.data[0].y, p.reshape(-1).numpy(), atol=1e-5)


# --- 2. cosine across layers --------------------------------------------------------------
def test_layer_cosine(tiny_acts):
    d = tiny_acts[3]["detectable_format:title"]
    sim = layer_cosine(d)
    n = len(d.layers)
    assert sim.shape == (n, n)
    assert torch.allclose(sim.diagonal(), torch.ones(n), atol=1e-6)
    assert torch.allclose(sim, sim.T, atol=1e-7)
    i, j = 0, n - 1
    manual = torch.nn.functional.cosine_similarity(d.vectors[i], d.vectors[j], dim=0)
    assert float(sim[i, j]) == pytest.approx(float(manual), abs=1e-5)
    fig = layer_cosine_figure(d)
    assert np.allclose(np.array(fig.data[0].z, dtype=float), sim.numpy())


# --- 3. cosine between instructions, clustered --------------------------------------------
def test_cluster_order_groups_similar_items():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    vecs = torch.stack([a, b, a + 0.05 * torch.randn(16, generator=g), b + 0.05 * torch.randn(16, generator=g), a + 0.1 * b])
    units = vecs / vecs.norm(dim=1, keepdim=True)
    order = cluster_order(units @ units.T)
    assert sorted(order) == list(range(5))
    pos = {item: k for k, item in enumerate(order)}
    assert abs(pos[1] - pos[3]) == 1  # the two b's sit together
    assert {pos[0], pos[2], pos[4]} == set(range(min(pos[0], pos[2], pos[4]), min(pos[0], pos[2], pos[4]) + 3))
    assert cluster_order(torch.eye(1)) == [0]


def test_instruction_cosine(tiny_acts):
    dirs = dict(tiny_acts[3])
    g = torch.Generator().manual_seed(2)
    base = dirs["detectable_format:title"]
    from dataclasses import replace

    dirs["random"] = replace(base, vectors=torch.randn(base.vectors.shape, generator=g), name="random")
    names, sim = instruction_cosine(dirs, layer=2)
    assert names == list(dirs)
    assert torch.allclose(sim, sim.T) and torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-6)
    u = [dirs[n].at(2).unit for n in names]
    assert float(sim[0, 1]) == pytest.approx(float(u[0] @ u[1]), abs=1e-5)
    fig = instruction_cosine_figure(dirs, layer=2)
    order = cluster_order(sim)
    assert list(fig.data[0].x) == [names[i] for i in order]
    assert np.allclose(np.array(fig.data[0].z, dtype=float), sim[order][:, order].numpy())
    with pytest.raises(WorkbenchError, match="at least two"):
        instruction_cosine({"a": base}, layer=2)


# --- 4. PCA -------------------------------------------------------------------------------
def test_activation_pca_matches_eigendecomposition():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 8, generator=g) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2])
    res = activation_pca(x, k=3)
    assert res.coords.shape == (40, 3) and res.components.shape == (3, 8)
    ev = res.explained_variance
    assert (ev[:-1] >= ev[1:]).all()
    cov = torch.cov(x.double().T)
    eig = torch.linalg.eigvalsh(cov).flip(0)[:3]
    assert torch.allclose(ev.double(), eig, rtol=1e-4)
    assert torch.allclose(res.components @ res.components.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(res.coords, (x - x.mean(0)) @ res.components.T, atol=1e-4)
    assert float(res.explained_ratio.sum()) <= 1.0 + 1e-6


def test_pca_points_and_figure(tiny_acts):
    _, _, acts, _ = tiny_acts
    groups = {iid: (w[:, 2], wo[:, 2]) for iid, (w, wo) in acts.items()}
    pts = pca_points(groups)
    n = sum(w.shape[0] + wo.shape[0] for w, wo in groups.values())
    assert pts.pca.coords.shape == (n, 2) and len(pts.instruction) == n and sum(pts.with_instruction) == n // 2
    fig = pca_figure(groups, layer=2)
    shown = sum(len(t.x) for t in fig.data if t.xaxis in (None, "x"))
    assert shown == n
    with pytest.raises(WorkbenchError, match="one layer"):
        pca_points({"a": (acts["detectable_format:title"][0], acts["detectable_format:title"][1])})


# --- 5. vocabulary projection -------------------------------------------------------------
def test_vocab_projection_matches_manual_topk(tiny, tiny_acts):
    d = tiny_acts[3]["detectable_format:title"]
    norm = tiny.original_model.model.norm
    saved = norm.weight.detach().clone()
    g = torch.Generator().manual_seed(4)
    try:
        with torch.no_grad():  # a non-trivial norm scale, so folding it in is visible
            norm.weight.copy_(torch.rand(saved.shape, generator=g) + 0.5)
        w_u = tiny.original_model.lm_head.weight.detach().float()
        for fold in (True, False):
            vp = vocab_projection(tiny, d, layers=[1, 3], k=5, fold_norm=fold)
            for row, layer in enumerate([1, 3]):
                u = d.at(layer).unit
                scores = w_u @ (u * norm.weight.detach().float() if fold else u)
                assert vp.top_ids[row].tolist() == scores.topk(5).indices.tolist()
                assert vp.bottom_ids[row].tolist() == scores.topk(5, largest=False).indices.tolist()
                assert torch.allclose(vp.top_scores[row], scores.topk(5).values, atol=1e-5)
            assert len(vp.top_tokens) == 2 and len(vp.top_tokens[0]) == 5
        fig = logit_lens_figure(tiny, d, layers=[1, 3], k=5)
        vp = vocab_projection(tiny, d, layers=[1, 3], k=5)
        assert [list(r) for r in fig.data[0].text] == [[plot_text(t) for t in row] for row in vp.top_tokens]
        assert [list(r) for r in fig.data[1].text] == [[plot_text(t) for t in row] for row in vp.bottom_tokens]
        assert np.allclose(np.array(fig.data[0].z, dtype=float), vp.top_scores.numpy())
    finally:
        with torch.no_grad():
            norm.weight.copy_(saved)


def test_token_labels_are_printable_and_plot_safe(tiny):
    labels = [token_label(tiny.tokenizer, i) for i in range(len(tiny.tokenizer))]
    assert all(label.isprintable() for label in labels)
    assert token_label(tiny.tokenizer, tiny.tokenizer("\n", add_special_tokens=False)["input_ids"][0]) == "\\n"
    assert plot_text("<b>") == "&lt;b&gt;"


# --- 6. per-token projections -------------------------------------------------------------
def test_token_projections_match_run_with_cache(tiny, tiny_acts):
    d = tiny_acts[3]["detectable_format:title"]
    prompt, response = "Explain why the sky is blue.", "Because of light."
    tp = token_projections(tiny, d, prompt, response, layer=2)
    prompt_ids = tiny.workbench.formatter.encode([prompt])[0][0].tolist()
    resp_ids = tiny.tokenizer(response, add_special_tokens=False)["input_ids"]
    assert tp.token_ids == prompt_ids + resp_ids and tp.n_prompt == len(prompt_ids)
    _, cache = tiny.run_with_cache(torch.tensor([tp.token_ids]))
    manual = cache["blocks.2.hook_resid_post"][0].float() @ d.at(2).unit
    assert torch.allclose(tp.values, manual, atol=1e-4)
    # the last prompt token is what collect_activations keeps
    last = wb.collect_activations(tiny, [prompt], layers=[2], progress=False)[0, 0] @ d.at(2).unit
    assert float(tp.values[tp.n_prompt - 1]) == pytest.approx(float(last), abs=1e-4)
    # token ids as the response (what generate(return_tokens=True) gives) are used as they are
    tp2 = token_projections(tiny, d.at(2), prompt, resp_ids)
    assert torch.allclose(tp2.values, tp.values, atol=1e-5)
    assert tp.center == pytest.approx((d.at(2).proj_with + d.at(2).proj_without) / 2)
    page = token_html(tp)
    assert page == tp._repr_html_() and page.count("<span") == len(tp.token_ids) and "response" in page
    fig = token_projection_figure(tp, per_row=8)
    flat = [v for row in fig.data[0].z for v in row if v is not None]
    assert np.allclose(flat, tp.values.numpy(), atol=1e-6)
    with pytest.raises(WorkbenchError, match="layer="):
        token_projections(tiny, d, prompt)


# --- 7. sweep figures ---------------------------------------------------------------------
SWEEP = [
    dict(instruction_id="t", layer=layer, coeff=c, accuracy=round(0.1 * layer + 0.05 * c, 3), perplexity=10.0 + layer + c)
    for layer in (2, 5) for c in (0.0, 1.0, 4.0)
]


def test_sweep_grid_and_figures_plot_given_values():
    grid = sweep_grid(SWEEP)
    assert grid.layers == [2, 5] and grid.coeffs == [0.0, 1.0, 4.0]
    assert grid.accuracy[1][2] == pytest.approx(0.7) and grid.perplexity[0][1] == 13.0
    fig = sweep_heatmap_figure(SWEEP)
    assert [list(r) for r in fig.data[0].z] == grid.accuracy
    fig = sweep_heatmap_figure(SWEEP, metric="perplexity")
    assert [list(r) for r in fig.data[0].z] == grid.perplexity
    coeffs, acc, ppl = strength_curve(SWEEP, layer=5)
    assert coeffs == [0.0, 1.0, 4.0] and acc == grid.accuracy[1] and ppl == grid.perplexity[1]
    fig = strength_figure(SWEEP, layer=5)
    assert list(fig.data[0].x) == coeffs and list(fig.data[0].y) == acc and list(fig.data[1].y) == ppl
    # missing cells are NaN in the grid, not invented
    partial = SWEEP[:-1] + [dict(SWEEP[0], instruction_id="other")]
    grid = sweep_grid(partial, instruction_id="t")
    assert math.isnan(grid.accuracy[1][2])
    with pytest.raises(RecordError, match="pass instruction_id"):
        sweep_grid(partial)
    # perplexity may be unmeasured
    assert math.isnan(sweep_grid([dict(SWEEP[0], perplexity=None)]).perplexity[0][0])


@pytest.mark.parametrize("key", ["instruction_id", "layer", "coeff", "accuracy", "perplexity"])
def test_sweep_records_missing_key(key):
    bad = [dict(r) for r in SWEEP]
    del bad[3][key]
    with pytest.raises(RecordError, match=f"record 3 lacks key '{key}'"):
        sweep_heatmap_figure(bad)
    assert issubclass(RecordError, WorkbenchError)


def test_sweep_records_bad_values():
    with pytest.raises(RecordError, match="duplicate"):
        sweep_grid(SWEEP + [SWEEP[0]])
    with pytest.raises(RecordError, match="accuracy"):
        sweep_grid([dict(SWEEP[0], accuracy=1.5)])
    with pytest.raises(RecordError, match="must be a number"):
        sweep_grid([dict(SWEEP[0], coeff="big")])
    with pytest.raises(RecordError, match="integer"):
        sweep_grid([dict(SWEEP[0], layer=2.5)])
    with pytest.raises(RecordError, match="no records"):
        sweep_grid([])
    with pytest.raises(RecordError, match="list of dict"):
        sweep_grid(SWEEP[0])
    with pytest.raises(RecordError, match="no records at layer 7"):
        strength_curve(SWEEP, layer=7)


# --- 8. four conditions -------------------------------------------------------------------
CONDS = [
    dict(instruction_id=iid, condition=c, accuracy=round(0.1 * k + 0.05 * j, 3))
    for j, iid in enumerate(("a", "b")) for k, c in enumerate(CONDITIONS)
]


def test_conditions_figure_plots_given_values():
    ids, conds, acc = condition_table(CONDS)
    assert ids == ["a", "b"] and conds == list(CONDITIONS)
    fig = conditions_figure(CONDS)
    assert len(fig.data) == 4
    for j, trace in enumerate(fig.data):
        assert trace.name == CONDITIONS[j] and list(trace.x) == ids
        assert list(trace.y) == [r["accuracy"] for r in CONDS if r["condition"] == CONDITIONS[j]]


@pytest.mark.parametrize("key", ["instruction_id", "condition", "accuracy"])
def test_condition_records_missing_key(key):
    bad = [dict(r) for r in CONDS]
    del bad[1][key]
    with pytest.raises(RecordError, match=f"record 1 lacks key '{key}'"):
        conditions_figure(bad)


def test_condition_records_unknown_condition():
    with pytest.raises(RecordError, match="unknown condition"):
        condition_table([dict(CONDS[0], condition="steered")])


# --- small real runs on the tiny model ----------------------------------------------------
def test_response_nll_and_runs_on_tiny(tiny, tiny_acts):
    from workbench.figures.steering_runs import response_perplexity, response_token_nll, run_conditions, run_sweep

    pairs, sets, _, dirs = tiny_acts
    rows = sets["detectable_format:title"].head(2)
    prompts = rows.prompts_without_instruction()
    resp = wb.generate(tiny, prompts, max_new_tokens=3, return_tokens=True)
    scores = response_token_nll(tiny, prompts, resp)
    for prompt, r, (nll, n) in zip(prompts, resp, scores):
        ids = tiny.workbench.formatter.encode([prompt])[0][0].tolist()
        with torch.no_grad():
            logits = tiny(torch.tensor([ids + r]), return_type="logits")[0]
        manual = torch.nn.functional.cross_entropy(logits[len(ids) - 1 : -1].float(), torch.tensor(r), reduction="sum")
        assert n == len(r) and nll == pytest.approx(float(manual), rel=1e-4)
    total = sum(s for s, _ in scores) / sum(n for _, n in scores)
    assert response_perplexity(tiny, prompts, resp) == pytest.approx(math.exp(total), rel=1e-6)
    recs = run_sweep(tiny, dirs["detectable_format:title"], rows, layers=[1, 3], strengths=[0, 2], max_new_tokens=3)
    assert len(recs) == 4 and sweep_grid(recs).layers == [1, 3]
    assert recs[0]["accuracy"] == recs[2]["accuracy"] and recs[0]["perplexity"] == recs[2]["perplexity"]
    assert recs[1]["coeff_abs"] == pytest.approx(2 * dirs["detectable_format:title"].at(1).norm)
    conds = run_conditions(tiny, dirs["detectable_format:title"], rows, layer=3, max_new_tokens=3)
    assert [r["condition"] for r in conds] == list(CONDITIONS)
    condition_table(conds)


# --- export and the browser ---------------------------------------------------------------
def test_png_reader_decodes_all_filters(tmp_path):
    import struct
    import zlib

    h, w = 5, 4
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    raw = bytearray()
    prev = np.zeros(w * 3, dtype=np.int64)
    for y in range(h):  # encode row y with filter type y (0..4)
        cur = img[y].reshape(-1).astype(np.int64)
        left = np.concatenate([np.zeros(3, dtype=np.int64), cur[:-3]])
        upleft = np.concatenate([np.zeros(3, dtype=np.int64), prev[:-3]])
        if y == 0:
            enc = cur
        elif y == 1:
            enc = cur - left
        elif y == 2:
            enc = cur - prev
        elif y == 3:
            enc = cur - (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            enc = cur - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([y]) + bytes((enc % 256).astype(np.uint8))
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b"")
    (tmp_path / "t.png").write_bytes(png)
    assert np.array_equal(read_png(tmp_path / "t.png"), img)


def test_save_figure_html(tmp_path):
    path = save_figure(sweep_heatmap_figure(SWEEP), tmp_path / "sweep")
    text = path.read_text()
    assert path.suffix == ".html" and "plotly" in text and len(text) > 1_000_000  # plotly.js embedded
    small = save_figure(sweep_heatmap_figure(SWEEP), tmp_path / "dir" / "sweep.html", plotlyjs="directory")
    assert '<script charset="utf-8" src="plotly.min.js">' in small.read_text() and len(small.read_text()) < 100_000
    assert (tmp_path / "dir" / "plotly.min.js").stat().st_size > 1_000_000
    with pytest.raises(WorkbenchError, match="plotlyjs"):
        save_figure(sweep_heatmap_figure(SWEEP), tmp_path / "x.html", plotlyjs="cdn")


def _chromium_or_skip() -> str:
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium binary (chromium, chromium-browser, google-chrome) on PATH; apt-get install -y chromium")
    return browser


@pytest.mark.parametrize("plotlyjs", ["inline", "directory"])
def test_figure_html_renders_in_headless_chromium(tmp_path, tiny_acts, plotlyjs):
    browser = _chromium_or_skip()
    d = tiny_acts[3]["detectable_format:title"]
    page = save_figure(layer_cosine_figure(d), tmp_path / "cosine.html", plotlyjs=plotlyjs)
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(prefix="wb-test-chromium-")
    try:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1000,700", page.resolve().as_uri()],
            capture_output=True, timeout=120, check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert shot.is_file(), "Chromium wrote no screenshot"
    pixels = read_png(shot)
    assert pixels.shape[:2] == (700, 1000)
    # a blank page is one colour; the heatmap's RdBu scale, axes and text give many
    assert distinct_colours(pixels) > 50
    # and the drawn heatmap is not white: count strongly coloured pixels
    rgb = pixels[..., :3].astype(int)
    assert int(((rgb.max(-1) - rgb.min(-1)) > 60).sum()) > 10_000


def test_save_image_png_not_blank(tmp_path):
    from workbench.figures import save_image
    from workbench.figures.export import kaleido_available

    if not kaleido_available():
        _chromium_or_skip()  # the fallback screenshots with Chromium
    elif find_chromium() is None:
        pytest.skip("kaleido is installed but finds no Chromium; apt-get install -y chromium")
    path = save_image(conditions_figure(CONDS), tmp_path / "conds.png")
    pixels = read_png(path)
    assert pixels.shape[:2] == (500, 700) and distinct_colours(pixels) > 50


# --- command line -------------------------------------------------------------------------
def test_cli_register_parses():
    from workbench.figures.cli import register

    parser = argparse.ArgumentParser(prog="workbench")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["figures", "--quick", "--out", "x"])
    assert args.quick and args.out == "x" and args.model == "smollm2-135m-instruct" and callable(args.func)
    args = parser.parse_args(["figures"])
    assert not args.quick and args.out == "figures"


def test_regenerate_on_tiny_model(tmp_path):
    from workbench.figures.regenerate import FigurePlan, regenerate_figures

    plan = FigurePlan(  # the smallest plan that still draws every figure
        n_pairs=3, instructions=("detectable_format:title", "change_case:english_lowercase"), sweep_depths=(1.0,),
        sweep_strengths=(0.0, 1.0), n_eval=2, condition_instructions=("detectable_format:title",), max_new_tokens=2,
    )
    written = regenerate_figures("tiny-random-llama", tmp_path, plan=plan, images=False, device="cpu", say=lambda s: None)
    names = {p.name for p in written}
    for stem in ("01_projections", "02_layer_cosine", "03_instruction_cosine", "04_pca", "05_logit_lens",
                 "06_token_projections", "07_sweep_accuracy", "07_strength", "08_conditions"):
        assert any(n.startswith(stem) and n.endswith(".html") for n in names), stem
    sweep = json.loads((tmp_path / "sweep_records.json").read_text())
    assert sweep_grid(sweep["records"]).layers  # the saved records are valid sweep records
    conds = json.loads((tmp_path / "condition_records.json").read_text())
    assert condition_table(conds["records"])[1] == list(CONDITIONS)


@pytest.mark.integration
def test_smol_token_projections_and_vocab(smol):
    """On SmolLM2 (tied embeddings, real final RMSNorm): per-token values match run_with_cache, top tokens match W_U."""
    from workbench.directions import Direction

    g = torch.Generator().manual_seed(5)
    d = Direction(vectors=torch.randn(2, 576, generator=g), layers=(10, 29), name="random", model_name="smol",
                  d_model=576, n_model_layers=30)
    tp = token_projections(smol, d, "Write a haiku about rain.", "Rain taps the window.", layer=29)
    _, cache = smol.run_with_cache(torch.tensor([tp.token_ids]))
    assert torch.allclose(tp.values, cache["blocks.29.hook_resid_post"][0].float() @ d.at(29).unit, atol=1e-3, rtol=1e-4)
    vp = vocab_projection(smol, d, k=5)
    scores = smol.original_model.lm_head.weight.detach().float() @ (d.at(10).unit * smol.original_model.model.norm.weight.detach().float())
    assert vp.top_ids[0].tolist() == scores.topk(5).indices.tolist()


def test_condition_aliases():
    alias = ["no_instruction", "no_instruction_steered", "instruction, no steering", "instruction_steered"]
    recs = [dict(instruction_id="a", condition=c, accuracy=0.25 * k) for k, c in enumerate(alias)]
    assert condition_table(recs) == (["a"], list(CONDITIONS), [[0.0, 0.25, 0.5, 0.75]])


def test_save_image_falls_back_to_chromium_screenshot(tmp_path, monkeypatch):
    from workbench.figures import export

    _chromium_or_skip()
    monkeypatch.setattr(export, "kaleido_available", lambda: False)
    path = export.save_image(conditions_figure(CONDS), tmp_path / "conds.png")
    pixels = read_png(path)
    assert pixels.shape[:2] == (520, 720) and distinct_colours(pixels) > 50
    with pytest.raises(WorkbenchError, match="SVG export needs kaleido"):
        export.save_image(conditions_figure(CONDS), tmp_path / "conds.svg")


def test_image_export_without_browser_fails_early_and_clearly(tmp_path, monkeypatch):
    from workbench.figures import export
    from workbench.figures.regenerate import regenerate_figures

    monkeypatch.setattr(export, "kaleido_available", lambda: False)
    monkeypatch.setattr(export, "find_chromium", lambda: None)
    with pytest.raises(WorkbenchError, match="--no-images"):
        regenerate_figures("no-such-model", tmp_path, say=lambda s: None)  # fails before loading anything
