"""Vector interop: llama.cpp control vectors, steering plain transformers models, other tools' files, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.directions import Direction
from workbench.generation import eos_token_ids
from workbench.steering import hf_steer
from workbench.interop import (
    export_control_vector,
    import_direction,
    llama_cpp_index,
    load_control_vector,
    load_vectors,
)
from workbench.cli import build_parser, main

TITLE = "detectable_format:title"
PROMPTS = ["Hi.", "Explain why the sky is blue.", "Write a story about a fox who finds a lantern."]


class NotATensor:
    """A custom object: a torch.save of it must never be unpickled."""

    def __init__(self) -> None:
        self.payload = torch.zeros(64)


def make_direction(n_layers: int = 4, d_model: int = 64, seed: int = 0, hook: str = "resid_post") -> Direction:
    g = torch.Generator().manual_seed(seed)
    return Direction(
        vectors=torch.randn(n_layers, d_model, generator=g) * 3,
        layers=tuple(range(n_layers)),
        name="title",
        model_name="tiny-random-llama",
        d_model=d_model,
        n_model_layers=n_layers,
        hook=hook,
        proj_with=torch.randn(n_layers, generator=g),
        proj_without=torch.randn(n_layers, generator=g),
    )


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    """The tiny random Llama as a plain transformers model (same weights as the bridge)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(wb.model_info(tiny).path, dtype=torch.float32).eval()


def read_gguf(path: Path):
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, fields


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray], kv: dict | None = None) -> Path:
    """Write a GGUF the way other tools do (e.g. llama.cpp's cvector-generator: i32 layer_count, no workbench keys)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    for key, value in (kv or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_int32(key, value)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- llama.cpp control vectors ----------------------------------------------------------------
def test_layer_numbering_rule():
    # llama.cpp adds direction.N to the output of its block N == our blocks.N.hook_resid_post
    assert [llama_cpp_index(L) for L in (1, 2, 29)] == [1, 2, 29]
    assert llama_cpp_index(5, "resid_pre") == 4  # the input of block 5 is the output of block 4
    with pytest.raises(wb.LayerError, match="direction.0"):
        llama_cpp_index(0)
    with pytest.raises(wb.LayerError):
        llama_cpp_index(1, "resid_pre")
    with pytest.raises(wb.LayerError, match="no llama.cpp equivalent"):
        llama_cpp_index(3, "resid_mid")


def test_gguf_file_layout_and_numbering(tmp_path):
    d = make_direction()
    out = tmp_path / "title.gguf"
    assert export_control_vector(d, out, layers=[3, 1]) == {3: 3, 1: 1}
    reader, fields = read_gguf(out)
    assert fields["general.architecture"].contents() == "controlvector"
    assert fields["controlvector.model_hint"].contents() == "llama"
    layer_count = fields["controlvector.layer_count"]
    assert layer_count.types[0].name == "UINT32" and layer_count.contents() == 4
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"direction.1", "direction.3"}
    for layer in (1, 3):
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type.name == "F32" and list(t.shape) == [64]
        # direction.N holds the unit vector of our layer N (blocks.N.hook_resid_post), times coeff 1
        assert np.allclose(np.asarray(t.data), d.at(layer).unit.numpy(), atol=1e-7)
    # the default skips block 0's output, which llama.cpp cannot steer; naming it is an error
    assert export_control_vector(d, tmp_path / "all.gguf") == {1: 1, 2: 2, 3: 3}
    with pytest.raises(wb.LayerError, match="cannot steer"):
        export_control_vector(d, tmp_path / "bad.gguf", layers=[0, 1])
    with pytest.raises(wb.LayerError, match="has no layer 7"):
        export_control_vector(d, tmp_path / "bad.gguf", layers=[7])
    # a resid_pre direction at block L is written for the output of block L - 1
    pre = make_direction(hook="resid_pre")
    assert export_control_vector(pre, tmp_path / "pre.gguf", layers=[2, 3]) == {2: 1, 3: 2}
    back = load_control_vector(tmp_path / "pre.gguf")
    assert back.layers == (1, 2) and back.hook == "resid_post"
    assert torch.allclose(back.vectors[0], pre.at(2).unit)


def test_gguf_round_trip_raw(tmp_path):
    d = make_direction()
    out = tmp_path / "raw.gguf"
    export_control_vector(d, out, normalize=False)
    back = load_control_vector(out)
    assert back.layers == (1, 2, 3)
    for layer in back.layers:
        assert torch.equal(back.at(layer).vector, d.at(layer).vector)
        assert back.at(layer).proj_with == pytest.approx(d.at(layer).proj_with)
        assert back.at(layer).proj_without == pytest.approx(d.at(layer).proj_without)
    assert (back.name, back.model_name, back.d_model, back.n_model_layers) == ("title", "tiny-random-llama", 64, 4)
    assert back.extra["normalized"] is False and back.extra["model_hint"] == "llama"
    # the imported direction saves and loads as a workbench direction file
    back.save(tmp_path / "back.safetensors")
    assert torch.equal(Direction.load(tmp_path / "back.safetensors").vectors, back.vectors)


def test_gguf_round_trip_unit_times_coeff(tmp_path, tiny, tiny_pairs):
    d = wb.compute_direction(tiny, tiny_pairs.filter(instruction=TITLE), progress=False)
    out = tmp_path / "unit.gguf"
    export_control_vector(d, out, coeff=-2.5, model_hint="llama")
    back = load_control_vector(out, model=tiny)
    assert back.layers == (1, 2, 3) and back.model_name == "tiny-random-llama"
    for layer in back.layers:
        assert torch.allclose(back.at(layer).vector, -2.5 * d.at(layer).unit, atol=1e-6)
        # a negative strength flips the unit direction, and the projection statistics with it
        assert back.at(layer).proj_with == pytest.approx(-d.at(layer).proj_with, abs=1e-5)
    assert back.extra["coeff"] == pytest.approx(-2.5)


def test_gguf_written_by_another_tool(tmp_path, tiny):
    g = torch.Generator().manual_seed(3)
    vecs = {i: torch.randn(64, generator=g).numpy() for i in (1, 2, 3)}
    path = write_gguf(
        tmp_path / "cvec.gguf", "controlvector", {f"direction.{i}": v for i, v in vecs.items()},
        {"controlvector.model_hint": "qwen2", "controlvector.layer_count": 3},
    )
    d = load_control_vector(path)
    assert d.layers == (1, 2, 3) and d.model_name == "qwen2" and d.n_model_layers == 4
    assert d.name == "cvec" and d.proj_with is None
    assert all(np.array_equal(d.at(i).vector.numpy(), vecs[i]) for i in (1, 2, 3))
    assert load_control_vector(path, model=tiny, name="x").model_name == "tiny-random-llama"
    wide = write_gguf(tmp_path / "wide.gguf", "controlvector", {"direction.1": np.zeros(32, np.float32) + 1})
    with pytest.raises(wb.ShapeError, match="d_model=32"):
        load_control_vector(wide, model=tiny)
    deep = write_gguf(tmp_path / "deep.gguf", "controlvector", {"direction.9": np.ones(64, np.float32)})
    with pytest.raises(wb.LayerError, match="direction.9"):
        load_control_vector(deep, model=tiny)


def test_gguf_bad_files(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf at all\n" * 10)
    with pytest.raises(wb.VectorFileError, match="notes.gguf.*not a readable GGUF"):
        load_control_vector(text)
    model_file = write_gguf(tmp_path / "model.gguf", "llama", {"blk.0.attn_norm.weight": np.ones(64, np.float32)})
    with pytest.raises(wb.VectorFileError, match="model.gguf.*'llama', not a llama.cpp control vector"):
        load_control_vector(model_file)
    zero = write_gguf(tmp_path / "zero.gguf", "controlvector", {"direction.0": np.ones(64, np.float32)})
    with pytest.raises(wb.VectorFileError, match="zero.gguf.*start at 1"):
        load_control_vector(zero)
    other = write_gguf(tmp_path / "other.gguf", "controlvector", {"bias.3": np.ones(64, np.float32)})
    with pytest.raises(wb.VectorFileError, match="direction.<layer>"):
        load_control_vector(other)
    nan = write_gguf(tmp_path / "nan.gguf", "controlvector", {"direction.2": np.full(64, np.nan, np.float32)})
    with pytest.raises(wb.VectorFileError, match="NaN"):
        load_control_vector(nan)
    good = tmp_path / "good.gguf"
    export_control_vector(make_direction(d_model=4096), good)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(wb.VectorFileError, match="cut.gguf"):
        load_control_vector(cut)
    with pytest.raises(wb.VectorFileError, match="no such file"):
        load_control_vector(tmp_path / "missing.gguf")


# --- plain transformers models ----------------------------------------------------------------
def logits_hf(hf, prompts=PROMPTS, formatter=None):
    ids, mask = formatter.encode(prompts, padding_side="left")
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits


def logits_bridge(model, prompts=PROMPTS):
    ids, mask = wb.model_info(model).formatter.encode(prompts, padding_side="left")
    with torch.no_grad():
        return model(ids, attention_mask=mask, return_type="logits")


@pytest.mark.parametrize(
    "kwargs", [dict(mode="add", coeff=6.0), dict(mode="project"), dict(mode="project", target=-3.0), dict(mode="ablate")]
)
def test_hf_steer_equals_workbench_steer(tiny, tiny_hf, tiny_pairs, kwargs):
    d = wb.compute_direction(tiny, tiny_pairs.filter(instruction=TITLE), progress=False)
    fmt = wb.model_info(tiny).formatter
    base = logits_hf(tiny_hf, formatter=fmt)
    assert torch.allclose(base, logits_bridge(tiny), atol=1e-4)
    with wb.steer(tiny, d, layer=2, **kwargs):
        ref = logits_bridge(tiny)
    with hf_steer(tiny_hf, d, layer=2, **kwargs) as specs:
        got = logits_hf(tiny_hf, formatter=fmt)
    assert specs[0].layer == 2 and specs[0].mode == kwargs["mode"]
    assert torch.allclose(got, ref, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)
    assert torch.equal(logits_hf(tiny_hf, formatter=fmt), base)  # hooks gone


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_hf_steer_positions_in_generation(tiny, tiny_hf, random_unit, positions):
    fmt = wb.model_info(tiny).formatter
    ids, mask = fmt.encode(PROMPTS[:2], padding_side="left")
    eos = eos_token_ids(tiny)
    with wb.steer(tiny, random_unit, layer=1, coeff=8.0, positions=positions):
        ref = wb.generate(tiny, PROMPTS[:2], max_new_tokens=8, return_tokens=True)
    with torch.no_grad(), hf_steer(tiny_hf, random_unit, layer=1, coeff=8.0, positions=positions):
        out = tiny_hf.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=eos,
            pad_token_id=tiny.tokenizer.pad_token_id, top_k=None, top_p=None, temperature=None,
        )
    rows = out[:, ids.shape[1]:].tolist()
    got = [r[: next((i for i, t in enumerate(r) if t in eos), len(r))] for r in rows]
    assert got == ref


def test_hf_steer_hook_hygiene_and_bad_input(tiny, tiny_hf, random_unit):
    fmt = wb.model_info(tiny).formatter
    block = tiny_hf.model.layers[2]
    calls = []
    mine = block.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        n = len(block._forward_hooks)
        with pytest.raises(RuntimeError, match="boom"):
            with hf_steer(tiny_hf, random_unit, layer=2, coeff=1.0):
                assert len(block._forward_hooks) == n + 1
                raise RuntimeError("boom")
        assert len(block._forward_hooks) == n
        logits_hf(tiny_hf, formatter=fmt)
        assert calls, "the user's own hook must still fire"
    finally:
        mine.remove()
    # resid_pre of block 2 is the output of block 1
    with hf_steer(tiny_hf, random_unit, layer=2, coeff=4.0, hook="resid_pre"):
        pre = logits_hf(tiny_hf, formatter=fmt)
    with hf_steer(tiny_hf, random_unit, layer=1, coeff=4.0):
        post = logits_hf(tiny_hf, formatter=fmt)
    assert torch.allclose(pre, post, atol=1e-5)
    with pytest.raises(wb.LayerError, match="out of range"):
        with hf_steer(tiny_hf, random_unit, layer=4):
            pass
    with pytest.raises(wb.ShapeError, match="the model has d_model=64"):
        with hf_steer(tiny_hf, torch.ones(32), layer=1):
            pass
    with pytest.raises(wb.SteeringError, match="unknown steering mode"):
        with hf_steer(tiny_hf, random_unit, layer=1, mode="rotate"):
            pass
    with pytest.raises(wb.SteeringError, match="needs at least one"):
        with hf_steer(tiny_hf):
            pass


# --- other tools' tensor files ----------------------------------------------------------------
def test_load_vectors_dicts_and_tensors(tmp_path, tiny):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    v = torch.randn(4, 64, generator=g)
    torch.save({1: v[1], 3: v[3]}, tmp_path / "int_keys.pt")
    d = load_vectors(tmp_path / "int_keys.pt", model=tiny)
    assert d.layers == (1, 3) and torch.equal(d.vectors, v[[1, 3]])
    assert (d.model_name, d.n_model_layers, d.hook) == ("tiny-random-llama", 4, "resid_post")

    torch.save({"0": v[0], "layers.2": v[2].half(), "blocks.3.hook_resid_post": v[3][None]}, tmp_path / "str_keys.pt")
    d = load_vectors(tmp_path / "str_keys.pt")
    assert d.layers == (0, 2, 3) and d.n_model_layers == 4 and d.name == "str_keys"
    assert torch.allclose(d.vectors[1], v[2], atol=1e-2) and d.vectors.dtype == torch.float32

    save_file({"model.layers.1": v[1], "layers.2": v[2]}, str(tmp_path / "keys.safetensors"))
    d = load_vectors(tmp_path / "keys.safetensors", model=tiny, name="x")
    assert d.layers == (1, 2) and d.name == "x" and torch.equal(d.vectors, v[1:3])

    torch.save(v, tmp_path / "stack.pt")
    assert torch.equal(load_vectors(tmp_path / "stack.pt").vectors, v)
    save_file({"directions": v}, str(tmp_path / "stack.safetensors"))
    d = load_vectors(tmp_path / "stack.safetensors", model=tiny)
    assert d.layers == (0, 1, 2, 3) and torch.equal(d.vectors, v)
    torch.save(v[2], tmp_path / "one.pt")
    assert load_vectors(tmp_path / "one.pt", layers=[2]).layers == (2,)
    with pytest.raises(wb.ShapeError, match="pass layers"):
        load_vectors(tmp_path / "one.pt")


def test_load_vectors_checks(tmp_path, tiny):
    v = torch.randn(5, 64)
    torch.save({1: v[1], 2: torch.randn(32)}, tmp_path / "mixed.pt")
    with pytest.raises(wb.ShapeError, match="differ in d_model"):
        load_vectors(tmp_path / "mixed.pt")
    torch.save({1: torch.randn(32)}, tmp_path / "narrow.pt")
    with pytest.raises(wb.ShapeError, match="d_model=32.*d_model=64"):
        load_vectors(tmp_path / "narrow.pt", model=tiny)
    torch.save({9: v[1]}, tmp_path / "deep.pt")
    with pytest.raises(wb.LayerError, match="out of range"):
        load_vectors(tmp_path / "deep.pt", model=tiny)
    torch.save(v, tmp_path / "hidden_states.pt")  # 5 rows for a 4-layer model: embeddings included
    with pytest.raises(wb.LayerError, match="embeddings"):
        load_vectors(tmp_path / "hidden_states.pt", model=tiny)
    torch.save({-1: v[1]}, tmp_path / "negative.pt")
    with pytest.raises(wb.LayerError, match="negative"):
        load_vectors(tmp_path / "negative.pt")
    torch.save({"mlp.weight": v[1], "layers.1": v[1]}, tmp_path / "keys.pt")
    with pytest.raises(wb.VectorFileError, match="'mlp.weight' is not a layer index"):
        load_vectors(tmp_path / "keys.pt")
    bad = v[1].clone()
    bad[3] = float("nan")
    torch.save({1: bad}, tmp_path / "nan.pt")
    with pytest.raises(wb.VectorFileError, match="layer 1 contains NaN"):
        load_vectors(tmp_path / "nan.pt")


def test_load_vectors_refuses_unsafe_and_broken_files(tmp_path):
    from safetensors.torch import save_file

    # a pickle that needs an arbitrary class is refused, never unpickled
    torch.save(NotATensor(), tmp_path / "custom.pt")
    torch.save({1: NotATensor()}, tmp_path / "custom_in_dict.pt")
    for name in ("custom.pt", "custom_in_dict.pt"):
        with pytest.raises(wb.VectorFileError, match=rf"{name}: refused.*weights_only"):
            load_vectors(tmp_path / name)
    # truncated files
    torch.save({i: torch.randn(512) for i in range(4)}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(wb.VectorFileError, match="cut.pt: not a readable torch.save file"):
        load_vectors(tmp_path / "cut.pt")
    save_file({"layers.1": torch.randn(512)}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(wb.VectorFileError, match="cut.safetensors: not a readable safetensors"):
        load_vectors(tmp_path / "cut.safetensors")
    # files that are not what they claim to be
    (tmp_path / "text.pt").write_text("layer,value\n1,0.5\n")
    with pytest.raises(wb.VectorFileError, match="text.pt: not a vector file"):
        load_vectors(tmp_path / "text.pt")
    (tmp_path / "junk.safetensors").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(wb.VectorFileError, match="junk.safetensors"):
        load_vectors(tmp_path / "junk.safetensors")
    torch.save({1: torch.randn(8)}, tmp_path / "really_torch.safetensors")
    with pytest.raises(wb.VectorFileError, match="expected a safetensors file, but its content is torch"):
        load_vectors(tmp_path / "really_torch.safetensors", format="safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(wb.VectorFileError, match="holds a list"):
        load_vectors(tmp_path / "list.pt")


def test_import_direction_detects_format(tmp_path, tiny):
    d = make_direction()
    export_control_vector(d, tmp_path / "a.gguf", normalize=False)
    d.save(tmp_path / "b.safetensors")
    torch.save({"layers.2": d.vectors[2]}, tmp_path / "c.bin")
    assert import_direction(tmp_path / "a.gguf").layers == (1, 2, 3)
    assert torch.equal(import_direction(tmp_path / "b.safetensors", model=tiny).vectors, d.vectors)
    assert import_direction(tmp_path / "c.bin", name="c").layers == (2,)


# --- CLI ------------------------------------------------------------------------------------------
def run_cli(argv: list[str]) -> int:
    """Run a command through the real ``workbench`` parser, raising instead of printing errors."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cli_export_and_import(tmp_path, capsys):
    d = make_direction()
    src = tmp_path / "title.safetensors"
    d.save(src)
    out = tmp_path / "title.gguf"
    assert run_cli(["directions", "export", str(src), "--format", "gguf", "--out", str(out), "--layers", "1,2-3", "--coeff", "2"]) == 0
    printed = capsys.readouterr().out
    assert "direction.1..3" in printed and "--control-vector-layer-range 1 3" in printed
    back = load_control_vector(out)
    assert torch.allclose(back.vectors, 2 * d.units[1:], atol=1e-6)

    assert run_cli(["directions", "export", str(src), "--out", str(out), "--raw", "--model-hint", "qwen2"]) == 0
    assert "skipped layer(s) 0" in capsys.readouterr().out
    back = load_control_vector(out)
    assert back.extra["model_hint"] == "qwen2" and torch.equal(back.vectors, d.vectors[1:])

    imported = tmp_path / "imported.safetensors"
    assert run_cli(["directions", "import", str(out), "--out", str(imported), "--name", "t2"]) == 0
    assert "from a gguf file" in capsys.readouterr().out
    loaded = Direction.load(imported)
    assert loaded.name == "t2" and loaded.layers == (1, 2, 3) and torch.equal(loaded.vectors, d.vectors[1:])

    torch.save(d.vectors[2:], tmp_path / "rows.pt")
    assert run_cli(["directions", "import", str(tmp_path / "rows.pt"), "--out", str(imported), "--layers", "2-3"]) == 0
    assert Direction.load(imported).layers == (2, 3)


def test_cli_bad_input(tmp_path, capsys):
    d = make_direction()
    d.save(tmp_path / "d.safetensors")
    with pytest.raises(wb.WorkbenchError, match="--layers"):
        run_cli(["directions", "export", str(tmp_path / "d.safetensors"), "--out", str(tmp_path / "o.gguf"), "--layers", "a-b"])
    with pytest.raises(wb.LayerError):
        run_cli(["directions", "export", str(tmp_path / "d.safetensors"), "--out", str(tmp_path / "o.gguf"), "--layers", "0"])
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(wb.VectorFileError, match="x.txt"):
        run_cli(["directions", "import", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o.safetensors")])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["directions", "export", "f", "--out", "o", "--format", "onnx"])
    # the main CLI's error handling: one line, exit status 2
    assert main(["directions", "import", str(tmp_path / "missing.pt"), "--out", "o"]) == 2
    assert "no such file" in capsys.readouterr().err


# --- integration: the real SmolLM2 ----------------------------------------------------------------
@pytest.mark.integration
def test_hf_steer_generation_matches_workbench_on_smollm2(smol):
    """Greedy generations of the plain transformers model under hf_steer equal wb.generate under wb.steer."""
    from transformers import AutoModelForCausalLM

    info = wb.model_info(smol)
    hf = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32).eval()
    direction = wb.compute_direction(smol, wb.load_pairs("format", TITLE).head(16), progress=False)
    prompts = ["Write a short poem about the sea.", "Describe a cat in two sentences.", "What is the capital of France?"]
    ids, mask = info.formatter.encode(prompts, padding_side="left")
    eos = eos_token_ids(smol)

    def hf_generate() -> list[list[int]]:
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=eos,
                pad_token_id=smol.tokenizer.pad_token_id, top_k=None, top_p=None, temperature=None,
            )
        return [r[: next((i for i, t in enumerate(r) if t in eos), len(r))] for r in out[:, ids.shape[1]:].tolist()]

    base = wb.generate(smol, prompts, max_new_tokens=20, return_tokens=True)
    assert hf_generate() == base
    for kwargs in (dict(layer=20, mode="add", coeff=4.0 * float(direction.norms[20])), dict(layer=24, mode="project")):
        with wb.steer(smol, direction, **kwargs):
            ref = wb.generate(smol, prompts, max_new_tokens=20, return_tokens=True)
        with hf_steer(hf, direction, **kwargs):
            got = hf_generate()
        assert got == ref, kwargs
        if kwargs["mode"] == "add":
            assert ref != base
