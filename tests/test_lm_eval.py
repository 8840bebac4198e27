"""lm-evaluation-harness steer files: layout, round trip, bad input, and the same steering inside lm-eval's own SteeredModel."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.cli import main
from workbench.directions import Direction
from workbench.interop.lm_eval import (
    HOOKPOINT_PREFIX,
    export_lm_eval,
    hookpoint_prefix,
    is_lm_eval_file,
    lm_eval_entries,
    lm_eval_hookpoint,
    lm_eval_specs,
    load_lm_eval,
)

TITLE = "detectable_format:title"
PROMPTS = ["Explain why the sky is blue.", "Write a story about a fox who finds a lantern."]
LAYER = 2


class NotATensor:
    """A custom object: a torch.save of it must never be unpickled."""

    def __init__(self) -> None:
        self.payload = torch.zeros(64)


@pytest.fixture(scope="module")
def title(tiny):
    rows = []
    queries = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern."]
    for i, q in enumerate(queries):
        rows.append(wb.PairRow(
            prompt=f"{q} Add a title in <<brackets>>.", prompt_without_instruction=q, instruction_id=TITLE, kwargs={},
            base_id=f"q{i}", eval_instruction_ids=(TITLE,), eval_kwargs=({},), split="train",
        ))
    return wb.compute_direction(tiny, wb.PairDataset(rows, name="title"), progress=False)


def save_entries(path, entries) -> str:
    torch.save(entries, str(path))
    return str(path)


def entry(vector: torch.Tensor, action: str = "add", coefficient: float = 1.0, **more) -> dict:
    return {"steering_vector": vector, "steering_coefficient": coefficient, "action": action,
            "bias": None, "head_index": None, **more}


# --- layout and naming ----------------------------------------------------------------------
def test_hookpoint_is_the_output_of_decoder_layer_n():
    assert lm_eval_hookpoint(26) == "layers.26"
    assert lm_eval_hookpoint(5, "resid_pre") == "layers.4"  # the input of block 5 is the output of layer 4
    assert lm_eval_hookpoint(3, prefix="h") == "h.3"
    with pytest.raises(wb.LayerError, match="embedding output"):
        lm_eval_hookpoint(0, "resid_pre")
    with pytest.raises(wb.LayerError, match="no lm-eval hookpoint"):
        lm_eval_hookpoint(3, "resid_mid")


def _tiny_config(model_type: str):
    import transformers

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128)
    if model_type == "opt":
        return transformers.OPTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                      vocab_size=128, word_embed_proj_dim=32)
    if model_type == "gpt_neox":
        return transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, vocab_size=128)
    if model_type == "gemma3":
        return transformers.Gemma3Config(text_config=small, vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=28, patch_size=14))
    if model_type == "qwen2":
        small.pop("head_dim")
    return transformers.AutoConfig.for_model(model_type, **small)


@pytest.mark.parametrize("model_type", sorted(HOOKPOINT_PREFIX))
def test_prefix_table_matches_lm_eval_naming(model_type):
    # lm-eval resolves hookpoints in model.base_model.named_modules(); the table must name decoder layer 1 there
    import transformers

    from workbench.models.plain import decoder_layers

    config = _tiny_config(model_type)
    cls = transformers.Gemma3ForConditionalGeneration if model_type == "gemma3" else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = cls._from_config(config) if model_type == "gemma3" else cls.from_config(config)
    prefix = HOOKPOINT_PREFIX[model_type]
    modules = dict(model.base_model.named_modules())
    assert modules[f"{prefix}.1"] is decoder_layers(model)[1]
    assert hookpoint_prefix(model) == prefix == hookpoint_prefix(model_type=model_type)


def test_file_layout(tmp_path, tiny, title):
    out = tmp_path / "title.pt"
    assert export_lm_eval(title, out, layers=[LAYER, 3], coeff=-2.5, model=tiny) == {2: "layers.2", 3: "layers.3"}
    raw = torch.load(str(out), weights_only=True)  # plain tensors and containers only
    assert set(raw) == {"layers.2", "layers.3"}
    for L in (2, 3):
        e = raw[f"layers.{L}"]
        assert set(e) >= {"steering_vector", "steering_coefficient", "action", "bias", "head_index"}
        assert e["action"] == "add" and e["steering_coefficient"] == -2.5 and e["bias"] is None and e["head_index"] is None
        assert e["steering_vector"].dtype == torch.float32 and e["steering_vector"].shape == (64,)
        assert torch.allclose(e["steering_vector"], title.at(L).unit)
    proj = lm_eval_entries(title, layers=[LAYER], mode="project")["layers.2"]
    assert proj["action"] == "clamp" and proj["steering_coefficient"] == pytest.approx(title.at(LAYER).proj_with)
    assert lm_eval_entries(title, layers=[LAYER], mode="project", target=7.0)["layers.2"]["steering_coefficient"] == 7.0
    abl = lm_eval_entries(title, layers=[LAYER], mode="ablate")["layers.2"]
    assert abl["action"] == "clamp" and abl["steering_coefficient"] == 0.0
    rawv = lm_eval_entries(title, layers=[LAYER], normalize=False)["layers.2"]["steering_vector"]
    assert torch.equal(rawv, title.at(LAYER).vector)


def test_export_refuses_bad_requests(tmp_path, tiny, title):
    with pytest.raises(wb.VectorFileError, match=r"\.pt or \.pth"):
        export_lm_eval(title, tmp_path / "x.safetensors", layers=[1])
    with pytest.raises(wb.LayerError, match="name the layer"):
        export_lm_eval(title, tmp_path / "x.pt")  # four layers: lm-eval would steer all at once
    with pytest.raises(wb.LayerError, match="has no layer 9"):
        export_lm_eval(title, tmp_path / "x.pt", layers=[9])
    with pytest.raises(wb.SteeringError, match="coeff applies to add"):
        export_lm_eval(title, tmp_path / "x.pt", layers=[1], mode="project", coeff=3.0)
    with pytest.raises(wb.SteeringError, match="unknown steering mode"):
        export_lm_eval(title, tmp_path / "x.pt", layers=[1], mode="clamp")
    other = Direction(vectors=torch.ones(1, 32), layers=(1,), name="w", model_name="x", d_model=32, n_model_layers=4)
    with pytest.raises(wb.ShapeError, match="d_model=32"):
        export_lm_eval(other, tmp_path / "x.pt", model=tiny)
    assert not (tmp_path / "x.pt").exists()


def test_round_trip(tmp_path, tiny, title):
    out = tmp_path / "rt.pt"
    export_lm_eval(title, out, layers=[1, 3], mode="project")
    assert is_lm_eval_file(out)
    back = load_lm_eval(out, model=tiny)
    assert back.layers == (1, 3) and back.name == title.name and back.model_name == "tiny-random-llama"
    assert back.hook == "resid_post" and back.d_model == 64 and back.n_model_layers == 4
    for L in (1, 3):
        assert torch.allclose(back.at(L).vector, title.at(L).unit)
        assert back.at(L).proj_with == pytest.approx(title.at(L).proj_with)
        assert back.at(L).proj_without == pytest.approx(title.at(L).proj_without)
    specs = lm_eval_specs(back)
    assert [(s.layer, s.mode) for s in specs] == [(1, "project"), (3, "project")]
    assert specs[0].target == pytest.approx(title.at(1).proj_with)
    # resid_pre: layer L is written at layers.(L-1) and read back as layer L, hook resid_pre
    pre = Direction(vectors=title.vectors, layers=title.layers, name="pre", model_name="tiny-random-llama",
                    d_model=64, n_model_layers=4, hook="resid_pre")
    assert export_lm_eval(pre, tmp_path / "pre.pt", layers=[3], coeff=2.0) == {3: "layers.2"}
    pre_back = load_lm_eval(tmp_path / "pre.pt")
    assert pre_back.layers == (3,) and pre_back.hook == "resid_pre"
    (spec,) = lm_eval_specs(pre_back)
    assert spec.coeff == pytest.approx(2.0) and spec.hook == "resid_pre"


def test_foreign_file_add_raw_and_clamp_with_bias(tmp_path):
    # a file another tool wrote: no workbench keys, a raw (non-unit) add vector, a clamp with a bias
    g = torch.Generator().manual_seed(3)
    v, w, b = torch.randn(64, generator=g), torch.randn(64, generator=g), torch.randn(64, generator=g)
    path = save_entries(tmp_path / "foreign.pt", {
        "layers.1": entry(v, "add", 3.0),
        "layers.2": entry(w, "clamp", 1.5, bias=b),
    })
    d = load_lm_eval(path)
    assert d.layers == (1, 2) and d.proj_with is None and d.extra["source_format"] == "lm-eval"
    add, clamp = lm_eval_specs(d)
    assert add.mode == "add" and add.coeff == pytest.approx(3.0 * float(v.norm()))
    u = w / w.norm()
    assert clamp.mode == "project" and clamp.target == pytest.approx(1.5 + float(b @ u), rel=1e-5)
    # both specs do exactly what lm-eval's own add / clamp functions do
    SteeredModel = pytest.importorskip("lm_eval.models.hf_steered").SteeredModel

    x = torch.randn(2, 5, 64, generator=g)
    assert torch.allclose(add.apply(x, None), SteeredModel.add(x, vector=v * 3.0, head_index=None), atol=1e-5)
    theirs = SteeredModel.clamp(x, direction=u, value=1.5, head_index=None, bias=b)
    assert torch.allclose(clamp.apply(x, None), theirs, atol=1e-5)


# --- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, error, match",
    [
        ({"transformer.h.1": entry(torch.ones(64))}, wb.VectorFileError, r"'transformer\.h\.1' names no module of tiny-random-llama"),
        ({"layers.9": entry(torch.ones(64))}, wb.VectorFileError, r"'layers\.9' names no module"),
        ({"layers.1.mlp": entry(torch.ones(64))}, wb.VectorFileError, r"'layers\.1\.mlp' is not the output of a decoder layer"),
        ({"layers.1": entry(torch.ones(32))}, wb.ShapeError, r"d_model=32; tiny-random-llama has d_model=64"),
        ({"layers.1": entry(torch.ones(64), "multiply")}, wb.VectorFileError, r"unknown action 'multiply'"),
        ({"layers.1": entry(torch.ones(64), head_index=2)}, wb.VectorFileError, r"attention head 2"),
        ({"layers.1": entry(torch.ones(64), coefficient="strong")}, wb.VectorFileError, r"steering_coefficient 'strong'"),
        ({"layers.1": {"steering_vector": torch.ones(64)}}, wb.VectorFileError, r"lacks action"),
        ({"layers.1": torch.ones(64)}, wb.VectorFileError, r"'layers\.1' is a Tensor, not a dict"),
        ({}, wb.VectorFileError, r"empty"),
        ({"layers.1": entry(torch.ones(64, dtype=torch.int64))}, wb.VectorFileError, r"not a float tensor"),
    ],
)
def test_bad_files_are_clear_errors_and_import_writes_nothing(tmp_path, tiny, capsys, content, error, match):
    path = save_entries(tmp_path / "bad.pt", content)
    with pytest.raises(error, match=match):
        load_lm_eval(path, model=tiny)
    out = tmp_path / "out.safetensors"
    assert main(["directions", "import", path, "--format", "lm-eval", "--model", "tiny-random-llama", "--out", str(out)]) == 2
    assert "workbench: error:" in capsys.readouterr().err
    assert not out.exists()


def test_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"layers.1": {"steering_vector": NotATensor(), "action": "add"}}, str(path))
    with pytest.raises(wb.VectorFileError, match="refused"):
        load_lm_eval(path)
    out = tmp_path / "out.safetensors"
    assert main(["directions", "import", str(path), "--format", "lm-eval", "--out", str(out)]) == 2
    assert "refused" in capsys.readouterr().err and not out.exists()


def test_cli_export_and_import(tmp_path, title, capsys):
    src = tmp_path / "title.safetensors"
    title.save(src)
    out = tmp_path / "title.pt"
    assert main(["directions", "export", str(src), "--format", "lm-eval", "--out", str(out), "--layer", "2",
                 "--mode", "project"]) == 0
    assert "layers.2" in capsys.readouterr().out
    back_path = tmp_path / "back.safetensors"
    assert main(["directions", "import", str(out), "--out", str(back_path)]) == 0  # detected by content
    printed = capsys.readouterr().out
    assert "lm-eval steer file" in printed and "--mode project --target" in printed
    back = Direction.load(back_path)
    assert back.layers == (2,) and torch.allclose(back.vectors[0], title.at(2).unit)
    assert main(["directions", "export", str(src), "--format", "lm-eval", "--out", str(tmp_path / "all.pt")]) == 2
    assert "name the layer" in capsys.readouterr().err
    assert main(["directions", "export", str(src), "--out", str(tmp_path / "x.gguf"), "--mode", "project"]) == 2


# --- the same steering, run by lm-eval itself ------------------------------------------------
@pytest.fixture(scope="module")
def lm_eval_models(tmp_path_factory, tiny, title):
    """lm-eval's own SteeredModel on the tiny model's folder, with an add file and a project file."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.hf_steered import SteeredModel

    folder = wb.model_info(tiny).path  # the tiny model as written by save_pretrained
    root = tmp_path_factory.mktemp("lmeval")
    out = {}
    for mode, kwargs in (("add", {"coeff": 6.0}), ("project", {})):
        path = root / f"{mode}.pt"
        export_lm_eval(title, path, layers=[LAYER], mode=mode, model=tiny, **kwargs)
        out[mode] = (SteeredModel(pretrained=str(folder), steer_path=str(path), device="cpu", dtype="float32",
                                  batch_size=2), kwargs)
    return out


def _workbench_loglikelihood(tiny, ctx: list[int], cont: list[int]) -> float:
    with torch.no_grad():
        logits = tiny(torch.tensor([ctx + cont]))
    lp = torch.log_softmax(logits[0].double(), -1)
    return float(sum(lp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


@pytest.mark.parametrize("mode", ["add", "project"])
def test_lm_eval_loglikelihoods_equal_workbench_steering(tiny, title, lm_eval_models, mode):
    from lm_eval.api.instance import Instance

    lm, kwargs = lm_eval_models[mode]
    pairs = [("The sky is", " blue because of scattering."), ("Write a title:", " <<Foxes>>")]
    theirs = [ll for ll, _ in lm.loglikelihood(
        [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)],
        disable_tqdm=True)]
    encoded = [lm._encode_pair(*p) for p in pairs]
    with wb.steer(tiny, title, layer=LAYER, mode=mode, **kwargs):
        ours = [_workbench_loglikelihood(tiny, c, t) for c, t in encoded]
    plain = [_workbench_loglikelihood(tiny, c, t) for c, t in encoded]
    assert theirs == pytest.approx(ours, abs=1e-4)
    assert all(abs(a - b) > 0.05 for a, b in zip(ours, plain))  # the steering changes them


@pytest.mark.parametrize("mode", ["add", "project"])
def test_lm_eval_greedy_tokens_equal_workbench_generate(tiny, title, lm_eval_models, mode):
    lm, kwargs = lm_eval_models[mode]
    fmt = wb.model_info(tiny).formatter
    n_new = 16
    with wb.steer(tiny, title, layer=LAYER, mode=mode, **kwargs):
        ours = wb.generate(tiny, PROMPTS, max_new_tokens=n_new, return_tokens=True)
    plain = wb.generate(tiny, PROMPTS, max_new_tokens=n_new, return_tokens=True)
    assert ours != plain
    eos = set(wb.decoding.eos_token_ids(tiny))
    for prompt, mine in zip(PROMPTS, ours):
        ctx = torch.tensor([lm.tok_encode(fmt.format(prompt))])
        # lm-eval's generation path (SteeredModel._model_generate: HF generate under its steering hooks)
        out = lm._model_generate(ctx, max_length=ctx.shape[1] + n_new, stop=[], do_sample=False,
                                 attention_mask=torch.ones_like(ctx))
        theirs = out[0, ctx.shape[1]:].tolist()
        cut = next((i + 1 for i, t in enumerate(mine) if t in eos), len(mine))
        assert cut >= 4 and theirs[:cut] == list(mine)[:cut]


# --- IFEval cross-check: the workbench's checks against lm-eval's vendored checkers ---------
def _record(row, response: str, name: str | None = None, condition: str = "instruction") -> dict:
    return {"experiment": "format", "instruction_id": name or row.instruction_id, "condition": condition,
            "base_id": row.base_id, "split": row.split, "prompt": row.prompt if condition == "instruction" else row.prompt_without_instruction,
            "response": response, "eval_instruction_ids": list(row.eval_instruction_ids)}


def test_crosscheck_resolves_builtin_kwargs_and_agrees(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    import json

    from workbench.interop.ifeval_crosscheck import crosscheck, read_generations

    fr = wb.load_pairs("format", "language:response_language", "test", kwargs={"language": "fr"}).rows[0]
    title_row = wb.load_pairs("format", TITLE, "test").rows[0]
    length_row = wb.load_pairs("length", "length_constraints:number_sentences", "test",
                               kwargs={"num_sentences": 2, "relation": "less than"}).rows[0]
    ocean_row = wb.load_pairs("keywords", "keywords:existence", "test", kwargs={"keywords": ["ocean"]}).rows[0]
    records = [
        _record(fr, "Bonjour à tous ! Nous sommes très heureux de vous accueillir dans notre club d'échecs.",
                name="language:response_language_fr"),  # the reproduce run's target name for the French rows
        _record(fr, "Hello everyone, and welcome to our chess club; we are glad you are here.",
                name="language:response_language_fr", condition="no_instruction"),
        {**_record(title_row, "<<A Warm Welcome>>\n\nDear members, welcome."), "strict": True, "loose": True},
        {**_record(title_row, "Dear members, welcome."), "strict": True, "loose": False},  # a wrong stored score
        {**_record(title_row, "x"), "experiment": "composition"},  # kwargs not recoverable: skipped, counted
        # a length record names its target N, a keywords record its word (as reproduce writes them)
        {**_record(length_row, "Welcome to the club, everyone. We meet on Fridays."), "experiment": "length",
         "target_n": 1, "instruction_id": None},
        {**_record(ocean_row, "Welcome! Our club meets by the ocean."), "experiment": "keywords", "word": "ocean",
         "instruction_id": None},
    ]
    path = tmp_path / "generations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    report = crosscheck(read_generations(path))
    assert report.n_records == 7 and sum(report.skipped.values()) == 1
    assert (report.n_stored, report.stored_mismatch) == (2, 1)
    got = [(s.instruction_id, s.ours_strict, s.theirs_strict) for s in report.scored]
    assert got == [("language:response_language", True, True), ("language:response_language", False, False),
                   (TITLE, True, True), (TITLE, False, False),
                   ("length_constraints:number_sentences", False, False),  # two sentences: not "at most 1"
                   ("keywords:existence", True, True)]
    rows = {r["instruction_id"]: r for r in report.rows()}
    assert rows["all"]["n"] == 6 and rows["all"]["strict_agree"] == 6 and rows["all"]["loose_agree"] == 6
    assert main(["interop", "ifeval-crosscheck", str(path), "--out", str(tmp_path / "agree.md")]) == 0
    assert "| all | 6 | 6/6 | 6/6 |" in (tmp_path / "agree.md").read_text()
    capsys.readouterr()


@pytest.mark.parametrize(
    "response, ours, theirs",
    [
        # if-verifiable strips the response first, so its loose "remove the first line" drops "Sure! HERE."
        ("\nSure! HERE.\nall lowercase text here", (False, True), (False, False)),
        # if-verifiable drops a <think>...</think> block before checking; lm-eval checks it too
        ("<think>PLAN</think>all lowercase", (True, True), (False, False)),
        ("all lowercase, no preamble", (True, True), (True, True)),
    ],
)
def test_crosscheck_known_differences(response, ours, theirs):
    pytest.importorskip("lm_eval")
    from workbench.evaluation.checkers import check_response
    from workbench.interop.ifeval_crosscheck import lm_eval_scores

    (mine,) = check_response(response, ["change_case:english_lowercase"], [{}], "")
    assert (mine.strict, mine.loose) == ours
    assert lm_eval_scores(response, ["change_case:english_lowercase"], [{}], "") == [theirs]


def test_crosscheck_bad_input(tmp_path, capsys):
    from workbench.interop.ifeval_crosscheck import read_generations

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(wb.DatasetError, match=r"bad.jsonl:2: not JSON"):
        read_generations(bad)
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(wb.DatasetError, match="no generations"):
        read_generations(tmp_path / "empty.jsonl")
    assert main(["interop", "ifeval-crosscheck", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
