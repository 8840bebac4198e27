"""Issue #15's leftovers: errors that live in ``workbench.errors``, one JSONL reader, lm-eval steer files, GGUF header, one token-padding helper."""

from __future__ import annotations

import json
import pickle
from fractions import Fraction

import pytest
import torch

import workbench as wb
from workbench import errors
from workbench.cli import main
from workbench.experiments import lock
from workbench.models import prompts

TINY = ["--model", "tiny-random-llama", "--device", "cpu"]


# --- 2: ContextLengthError and RunFolderBusy are defined in workbench.errors -------------------------
def test_moved_errors_are_the_same_classes_everywhere_and_reach_the_cli_as_one_line(tiny, capsys):
    assert errors.ContextLengthError is prompts.ContextLengthError and errors.RunFolderBusy is lock.RunFolderBusy
    for cls in (errors.ContextLengthError, errors.RunFolderBusy):
        assert cls.__module__ == "workbench.errors" and cls.__bases__ == (errors.WorkbenchError,)
        assert type(pickle.loads(pickle.dumps(cls("x")))) is cls  # a worker process's error unpickles to the same class
    with pytest.raises(errors.ContextLengthError, match="exceed the context"):  # raised by generation, caught as errors'
        wb.generate(tiny, ["a" * 1100], max_new_tokens=2)
    rc = main(["generate", "--prompt", "a" * 1100, *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("workbench: error: ") and "exceed the context" in err and err.count("\n") == 1, err


# --- 3: one JSONL reader for the unit store and the generations file ---------------------------------
def test_a_corrupt_middle_line_is_the_same_one_line_error_from_the_store_and_the_generations_reader(tmp_path):
    from workbench.experiments import UnitStore
    from workbench.experiments.results import read_generations

    good = json.dumps({"key": "a", "response": "ok"})
    for bad, fragment in ((b"{not json", "not JSON (line 2 column 2"), (b"[1, 2]", "a JSON list, expected an object"),
                          ('{"key": "\u00e9"}'.encode("latin-1"), "not UTF-8")):
        path = tmp_path / "units.jsonl"
        path.write_bytes(good.encode() + b"\n" + bad + b"\n" + good.encode() + b"\n")
        with pytest.raises(errors.DatasetError) as from_store:
            UnitStore(path, required=("key",)).load()
        with pytest.raises(errors.DatasetError) as from_results:
            read_generations(path)
        assert str(from_store.value) == str(from_results.value)  # one reader, one text
        assert str(from_store.value).startswith(f"{path}:2: ") and fragment in str(from_store.value), from_store.value
        assert "\n" not in str(from_store.value)


def test_the_store_keeps_its_resume_semantics_on_the_shared_reader(tmp_path):
    from workbench.experiments import UnitStore

    path = tmp_path / "units.jsonl"
    whole = "".join(json.dumps({"key": k, "s": "\u00e9\u2028"}, ensure_ascii=False) + "\n" for k in "ab").encode()
    cases = [  # (newline-less last line, records kept, file afterwards)
        (b'{"key": "c", "v"', ["a", "b"], whole),  # torn by a killed writer: dropped and trimmed
        ('{"key": "c", "s": "\u00e9'.encode()[:-1], ["a", "b"], whole),  # torn inside a UTF-8 character
        (b'{"key": "c"}', ["a", "b", "c"], whole + b'{"key": "c"}\n'),  # complete but for its newline: kept, ended
        (b'{"other": 1}', ["a", "b"], whole),  # a key-less object as the last line: dropped, as before
        (b"  ", ["a", "b"], whole + b"  "),  # whitespace only: left alone
    ]
    for tail, keys, after in cases:
        path.write_bytes(whole + tail)
        store = UnitStore(path, required=("key",))
        assert list(store.load()) == keys and store.get("a")["s"] == "\u00e9\u2028"
        assert path.read_bytes() == after, tail
    path.write_bytes(whole + b'{"key": "c", "v"')
    from workbench.experiments.results import read_generations

    with pytest.raises(errors.DatasetError, match=r"units.jsonl:3: not JSON"):  # no tolerance outside the store
        read_generations(path)


def test_generations_round_trip_a_raw_line_separator(tmp_path):
    from workbench.experiments.results import read_generations, write_jsonl

    records = [{"response": "one\u2028two\u0085three\rfour"}, {"response": "five"}]  # splitlines() would cut these
    assert read_generations(write_jsonl(tmp_path / "generations.jsonl", records)) == records


# --- 4: import_direction() detects lm-eval steer files -------------------------------------------------
def _direction(n_layers: int = 4, d_model: int = 64) -> wb.Direction:
    g = torch.Generator().manual_seed(3)
    return wb.Direction(vectors=torch.randn(n_layers, d_model, generator=g) * 3, layers=tuple(range(n_layers)), name="title",
                        model_name="tiny-random-llama", d_model=d_model, n_model_layers=n_layers,
                        proj_with=torch.randn(n_layers, generator=g), proj_without=torch.randn(n_layers, generator=g))


def test_import_direction_reads_an_lm_eval_steer_file_exactly(tmp_path, tiny):
    from workbench.interop import detect_format, import_direction, load_vectors
    from workbench.interop.lm_eval import export_lm_eval, lm_eval_specs, load_lm_eval

    d = _direction()
    path = tmp_path / "title.pt"
    assert export_lm_eval(d, path, layers=[1, 3], mode="add", coeff=2.0, normalize=False) == {1: "layers.1", 3: "layers.3"}
    assert detect_format(path) == "lm-eval"
    for model in (None, tiny):
        back = import_direction(path, model=model)
        assert back.layers == (1, 3) and back.hook == "resid_post" and back.name == "title"
        assert torch.equal(back.vectors, d.vectors[[1, 3]])  # the raw vectors, bit for bit
        assert torch.equal(back.proj_with, d.proj_with[[1, 3]]) and torch.equal(back.proj_without, d.proj_without[[1, 3]])
        same = load_lm_eval(path, model=model)  # the two paths give the same Direction
        assert torch.equal(back.vectors, same.vectors) and back.extra == same.extra and back.n_model_layers == 4
    assert [(s.layer, s.coeff) for s in lm_eval_specs(back)] == [(1, pytest.approx(2.0 * float(d.vectors[1].norm()))),
                                                                  (3, pytest.approx(2.0 * float(d.vectors[3].norm())))]
    assert import_direction(path, name="renamed").name == "renamed"
    with pytest.raises(errors.WorkbenchError, match="names its layers"):
        import_direction(path, layers=[2])
    with pytest.raises(errors.VectorFileError, match="an lm-eval steer file; use load_lm_eval"):
        load_vectors(path)  # before: "entry 'layers.1' is a dict, not a tensor"
    torch.save({"layers.2": d.vectors[2]}, tmp_path / "plain.pt")  # a plain torch vector file stays "torch"
    assert detect_format(tmp_path / "plain.pt") == "torch" and import_direction(tmp_path / "plain.pt").layers == (2,)


def test_a_corrupt_lm_eval_file_is_one_line(tmp_path):
    from workbench.interop import import_direction
    from workbench.interop.lm_eval import export_lm_eval

    d = _direction()
    good = tmp_path / "good.pt"
    export_lm_eval(d, good, layers=[1], mode="project")
    entries = torch.load(good, weights_only=True)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated mid-write
    torch.save({"layers.1": {**entries["layers.1"], "action": "multiply"}}, tmp_path / "action.pt")
    torch.save({"layers.1": {**entries["layers.1"], "steering_vector": torch.full((64,), float("nan"))}}, tmp_path / "nan.pt")
    torch.save({"layers.1": {**entries["layers.1"], "bias": Fraction(1, 3)}}, tmp_path / "pickled.pt")  # not weights_only
    cases = [("cut.pt", "not a readable torch.save file"), ("action.pt", "unknown action 'multiply'"),
             ("nan.pt", "steering_vector is zero or not finite"), ("pickled.pt", "refused")]
    for name, fragment in cases:
        with pytest.raises(errors.VectorFileError) as err:
            import_direction(tmp_path / name)
        message = str(err.value)
        assert message.startswith(str(tmp_path / name)) and fragment in message and "\n" not in message, message


# --- 5: a GGUF header is parsed once per conversion ---------------------------------------------------
def test_the_gguf_header_is_parsed_once_for_architecture_name_and_vocabulary(tmp_path, monkeypatch):
    import gguf

    from test_gguf_tokenizer import VOCAB, _write_gguf, _write_unigram_folder
    from workbench.models.gguf import gguf_architecture, read_gguf_header, rebuild_spm_bpe_tokenizer

    path = tmp_path / "m.gguf"
    _write_gguf(path)  # a gemma3 header with a SentencePiece-BPE vocabulary
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        folder.mkdir()
        _write_unigram_folder(folder)
    rebuild_spm_bpe_tokenizer(path, two)  # reads the vocabulary itself
    parsed = []

    class Counting(gguf.GGUFReader):  # the real reader, counted
        def __init__(self, *args, **kwargs):
            parsed.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    header = read_gguf_header(path)  # what convert_gguf does: one parse, then the rebuild from it
    rebuild_spm_bpe_tokenizer(path, one, header.vocab)
    assert len(parsed) == 1 and (header.architecture, header.name) == gguf_architecture(path) == ("gemma3", "")
    assert header.vocab == ([p for p, _, _ in VOCAB], [s for _, s, _ in VOCAB], [t for _, _, t in VOCAB])
    for name in ("tokenizer.json", "tokenizer_config.json"):  # same files as reading the vocabulary again
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert read_gguf_header(path, vocab=False).vocab is None


def test_pad_tokens_pads_either_side_and_refuses_bad_input():
    from workbench.models.batching import pad_tokens

    ids, mask = pad_tokens([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_tokens([(5, 6, 7), (8,)], 9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(errors.WorkbenchError, match="side must be one of"):
        pad_tokens([[1]], 0, side="middle")
    with pytest.raises(errors.WorkbenchError, match="no rows"):
        pad_tokens([], 0)
