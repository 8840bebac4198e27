"""Real evaluation data as it is (#13): IFEval, the paper authors' paired files, renamed fields, failed rewrites,
any keyword, one direction per language, composition on external rows, and the statistics behind every table."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
import math
from pathlib import Path

import pytest

import workbench as wb
from workbench.data.builtin import instruction_phrase, language_codes
from workbench.data.files import LoadReport, ifeval_path, read_pairs_file
from workbench.errors import DatasetError, WorkbenchError
from workbench.evaluation.stats import mcnemar_exact, rate_cell, wilson_interval
from workbench.experiments.reproduce import ReproduceConfig, format_target_names, run_reproduce
from workbench.experiments.results import to_csv, to_markdown

TITLE = "detectable_format:title"
LANG = "language:response_language"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- statistics ----------------------------------------------------------------------------------
def test_wilson_interval_matches_the_formula():
    for k, n in ((7, 20), (0, 20), (20, 20), (1, 3), (37, 40)):
        z, p = 1.959963984540054, k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo, hi = wilson_interval(k, n)
        assert lo == pytest.approx(max(0.0, centre - half), abs=1e-9) and hi == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert [round(x, 3) for x in wilson_interval(7, 20)] == [0.181, 0.567]
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(WorkbenchError, match="successes <= n"):
        wilson_interval(5, 3)
    cell = rate_cell([True] * 7 + [False] * 13)
    assert cell["accuracy"] == 0.35 and cell["accuracy_lo"] == pytest.approx(0.1812, abs=1e-4)


def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs():
    a = [True] * 5 + [False] * 1 + [True] * 10 + [False] * 4
    b = [False] * 5 + [True] * 1 + [True] * 10 + [False] * 4
    res = mcnemar_exact(a, b)
    # two-sided exact: 2 * P(X <= 1 | n=6, p=1/2) = 2 * 7/64
    assert (res.only_a, res.only_b) == (5, 1) and res.p_value == pytest.approx(14 / 64)
    assert not res.significant
    assert mcnemar_exact([True] * 9, [False] * 9).p_value == pytest.approx(2 / 512) and mcnemar_exact([True] * 9, [False] * 9).significant
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0
    with pytest.raises(WorkbenchError, match="differ in length"):
        mcnemar_exact([True], [True, False])


def test_tables_show_intervals_and_mark_non_significant():
    row = {"condition": "x", "n": 20, **rate_cell([True] * 7 + [False] * 13), "accuracy_p": 0.2}
    md = to_markdown([row], ["condition", "n", "accuracy", "accuracy_p"])
    assert "35% (18–57)" in md and "0.2 n.s." in md
    text = to_csv([row], ["condition", "n", "accuracy", "accuracy_p"])
    header = next(csv.reader([text.splitlines()[0]]))
    assert header == ["condition", "n", "accuracy", "accuracy_lo", "accuracy_hi", "accuracy_p"]


# --- files as they are -------------------------------------------------------------------------------
def test_packaged_ifeval_loads_offline_with_licence():
    data, report = read_pairs_file("ifeval")
    assert len(data) == 541 and report.schema == "ifeval"
    assert (ifeval_path().parent / "LICENSE").is_file() and "Apache" in (ifeval_path().parent / "README.md").read_text()
    multi = [r for r in data if len(r.eval_instruction_ids) > 1]
    assert len(multi) > 100 and all(len(r.eval_kwargs) == len(r.eval_instruction_ids) for r in data)
    assert len([r for r in data if TITLE in r.eval_instruction_ids]) == 37


def authors_rows() -> list[dict]:
    """Rows in the paper authors' layout: original_prompt with, prompt without; for_eval is the steering key."""
    return [
        {"uid": 1, "key": 1108, "original_prompt": "Are hamburgers sandwiches? Please respond using only the Kannada language.",
         "prompt": "Are hamburgers sandwiches?", "instruction_id_list": [LANG], "kwargs": [{"language": "kn"}],
         "instruction_id_list_for_eval": ["language:response_language_kn"]},
        {"uid": 2, "key": 1072, "original_prompt": "Write a blog post with 400 or more words about hammocks.",
         "prompt": "Write a blog post about hammocks.", "instruction_id_list": ["length_constraints:number_words"],
         "kwargs": [{"relation": "at least", "num_words": 400}],
         "instruction_id_list_for_eval": ["length_constraints:number_words_at least"]},
        {"uid": 3, "key": 9, "original_prompt": "Write an email. Include a title in <<double brackets>>.",
         "prompt": "Write an email. Include a title in <<double brackets>>.", "instruction_id_list": [TITLE],
         "kwargs": [{}], "instruction_id_list_for_eval": [TITLE]},
    ]


def test_authors_convention_detected_and_failed_rewrites_named(tmp_path):
    path = write_jsonl(tmp_path / "paper.jsonl", authors_rows())
    data, report = read_pairs_file(path)
    assert report.fields == {"prompt": "original_prompt", "prompt_without_instruction": "prompt"}
    assert report.convention == "steering" and "not IFEval ids" in report.convention_reason
    kn = data[0]
    assert kn.instruction_id == "language:response_language_kn" and kn.eval_instruction_ids == (LANG,)
    assert kn.eval_kwargs == ({"language": "kn"},) and kn.prompt_without_instruction == "Are hamburgers sandwiches?"
    assert report.failed_rewrites == ["9"] and data[2].prompt_without_instruction is None
    assert any("failed rewrites" in line and "9" in line for line in report.lines())
    assert len(data.with_twin()) == 2
    # read in the other convention the steering keys are checked, and they are not IFEval ids: one clear error
    with pytest.raises(DatasetError, match=r"unknown IFEval instruction id\(s\) to check: .*language:response_language_kn"):
        read_pairs_file(path, convention="eval")


def test_field_mapping_and_bad_files(tmp_path):
    rows = [{"id": "a", "original_prompt": "Q? Use no commas.", "model_output": "Q?", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{}]}]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    with pytest.raises(DatasetError, match="renamed.jsonl line 1: no known schema.*--fields"):
        read_pairs_file(path)
    data = wb.load_pairs_file(path, fields="prompt=original_prompt,prompt_without_instruction=model_output,base_id=id")
    assert data[0].prompt == "Q? Use no commas." and data[0].prompt_without_instruction == "Q?" and data[0].base_id == "a"
    with pytest.raises(DatasetError, match="names \\['nope'\\], which line 1 lacks"):
        wb.load_pairs_file(path, fields={"prompt": "nope", "prompt_without_instruction": "model_output"})
    with pytest.raises(DatasetError, match="unknown field"):
        wb.load_pairs_file(path, fields="question=original_prompt")
    with pytest.raises(DatasetError, match="not OURS=THEIRS"):
        wb.load_pairs_file(path, fields="prompt")
    bad_ids = write_jsonl(tmp_path / "ids.jsonl", [{"key": 1, "prompt": "p", "instruction_id_list": ["made:up", "also:fake"],
                                                    "kwargs": [{}, {}]}])
    with pytest.raises(DatasetError, match="ids.jsonl: unknown IFEval instruction id\\(s\\) to check: also:fake, made:up"):
        wb.load_pairs_file(bad_ids)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"key": 1}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match="latin1.jsonl:2: not UTF-8"):
        wb.load_pairs_file(tmp_path / "latin1.jsonl")


# --- built-in data: any word, every language, varied arguments ------------------------------------------
def test_any_keyword_gives_pairs_and_a_direction(tiny):
    word = "Blue Whale"
    train = wb.load_pairs("keywords", "keywords:existence", kwargs={"keywords": [word]})
    assert len(train) == 120 and all(f'"{word}"' in r.prompt for r in train)
    assert all(r.eval_kwargs == ({"keywords": [word]},) for r in train)
    forbid = wb.load_pairs("keywords", "keywords:forbidden_words", split="test", kwargs={"forbidden_words": [word]})
    assert len(forbid) == 40
    d = wb.compute_direction(tiny, train.head(6), progress=False)
    assert all(d.at(layer).norm > 0 for layer in d.layers)
    for bad in ("", "  ", ' "quoted" '):
        with pytest.raises(DatasetError, match="word"):
            wb.load_pairs("keywords", "keywords:existence", kwargs={"keywords": [bad]})
    with pytest.raises(DatasetError, match="exactly one word"):
        wb.load_pairs("keywords", "keywords:existence", kwargs={"keywords": ["a", "b"]})


def test_one_direction_per_language():
    names = format_target_names([LANG])
    assert len(names) == len(language_codes()) >= 22
    assert ("language:response_language_kn", LANG, {"language": "kn"}) in names
    ifeval_langs = {kw["language"] for r in wb.load_pairs_file("ifeval")
                    for i, kw in zip(r.eval_instruction_ids, r.eval_kwargs) if i == LANG}
    assert ifeval_langs <= set(language_codes())
    sw = wb.load_pairs("format", LANG, kwargs={"language": "sw"})
    assert len(sw) == 120 and {r.kwargs["language"] for r in sw} == {"sw"} and "Swahili" in sw[0].prompt
    with pytest.raises(DatasetError, match="no built-in phrasing for language 'xx'"):
        format_target_names(["language:response_language_xx"])


def test_instruction_phrase_matches_builtin_rows():
    row = wb.load_pairs("length", "length_constraints:number_sentences", split="test", kwargs={"num_sentences": 3})[0]
    phrase = instruction_phrase("length_constraints:number_sentences", row.kwargs, row.base_id)
    assert row.prompt == f"{row.prompt_without_instruction} {phrase}"


# --- experiments on external files (tiny model) ------------------------------------------------------------
SMALL = dict(model="tiny-random-llama", quick=True, n_train=4, n_val=3, max_new_tokens=4, threads=1, device="cpu")


def test_reproduce_on_authors_file_reports_failed_rewrites(tiny, tmp_path):
    rows = authors_rows() + [
        {"uid": 4, "key": 20 + i, "original_prompt": f"Write note {i}. Include a title in <<double brackets>>.",
         "prompt": f"Write note {i}.", "instruction_id_list": [TITLE, "punctuation:no_comma"], "kwargs": [{}, {}],
         "instruction_id_list_for_eval": [TITLE]} for i in range(3)
    ]
    path = write_jsonl(tmp_path / "paper.jsonl", rows)
    log: list[str] = []
    cfg = ReproduceConfig("format", instructions=[TITLE, "language:response_language_kn"], eval_data=str(path),
                          out=str(tmp_path / "r"), **SMALL)
    out = run_reproduce(cfg, say=log.append, model=tiny)
    assert any("failed rewrites" in line for line in log) and any("'steering' convention" in line for line in log)
    config = json.loads((out / "config.json").read_text())
    assert config["eval_data"]["failed_rewrites"] == ["9"] and config["eval_data"]["convention"] == "steering"
    table = list(csv.DictReader((out / "results.csv").open()))
    title = {r["condition"]: r for r in table if r["instruction_id"] == TITLE}
    assert title["instruction"]["n"] == "4" and title["no_instruction"]["n"] == "3"  # the failed rewrite left out
    assert "instruction_accuracy" in table[0] and "accuracy_lo" in table[0]
    kn = {r["condition"]: r for r in table if r["instruction_id"] == "language:response_language_kn"}
    assert kn["instruction"]["n"] == "1"
    per = list(csv.DictReader((out / "per_instruction.csv").open()))
    assert {r["checked_id"] for r in per if r["instruction_id"] == TITLE} == {TITLE, "punctuation:no_comma"}
    assert "(" in (out / "results.md").read_text() and "Wilson" in (out / "results.md").read_text()


def test_composition_and_keywords_on_external_rows(tiny, tmp_path):
    rows = wb.load_pairs("format", TITLE, split="test").head(3)
    path = tmp_path / "title.jsonl"
    rows.to_jsonl(path)
    cfg = ReproduceConfig("composition", instructions=[TITLE], targets=[2], eval_data=str(path), out=str(tmp_path / "c"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    table = list(csv.DictReader((out / "results.csv").open()))
    assert table and {r["n"] for r in table} == {"3"} and "both_acc_lo" in table[0]
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    appended = [g for g in gens if g["prompt"].startswith(rows[0].prompt + " ") and "sentence" in g["prompt"]]
    assert appended, "the length instruction is appended to the external rows' prompts"
    word = "Blue Whale"
    cfg = ReproduceConfig("keywords", words=[word], strengths=[2.0], n_eval=3, out=str(tmp_path / "k"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    table = list(csv.DictReader((out / "results.csv").open()))
    assert {r["word"] for r in table} == {word} and {r["task"] for r in table} == {"include", "exclude"}
    assert any(r["accuracy_p"] for r in table if r["condition"].endswith("_steered")) or all(
        r["layer"] == "" for r in table)  # p-values wherever a steered condition ran


def test_eval_file_without_rows_for_the_instruction(tiny, tmp_path):
    path = write_jsonl(tmp_path / "commas.jsonl", [{"key": 1, "prompt": "Write. No commas.", "instruction_id_list": ["punctuation:no_comma"],
                                                    "kwargs": [{}]}])
    cfg = ReproduceConfig("format", instructions=[TITLE], eval_data=str(path), out=str(tmp_path / "e"), **SMALL)
    with pytest.raises(DatasetError, match=f"commas.jsonl: no row checks any instruction this format run evaluates \\({TITLE}\\)"):
        run_reproduce(cfg, say=lambda s: None, model=tiny)
    assert not list((tmp_path / "e").rglob("sweep.jsonl"))  # found before any work: nothing swept or written


def test_a_file_that_covers_part_of_a_run_is_evaluated_where_it_covers(tiny, tmp_path):
    """Inclusion rows for one of two words: the other word gets no direction, exclusion is skipped, and the log,
    config.json and the results page list what was skipped."""
    rows = wb.load_pairs("keywords", "keywords:existence", split="test", kwargs={"keywords": ["ocean"]}).head(3)
    path = tmp_path / "ocean.jsonl"
    rows.to_jsonl(path)
    log: list[str] = []
    cfg = ReproduceConfig("keywords", words=["ocean", "music"], strengths=[1.0], eval_data=str(path), out=str(tmp_path / "k"), **SMALL)
    out = run_reproduce(cfg, say=log.append, model=tiny)
    skipped = {s["name"] for s in json.loads((out / "config.json").read_text())["coverage"]["skipped"]}
    assert skipped == {"exclude:ocean", "include:music", "exclude:music"}
    assert sum("skipped" in line for line in log) == 3
    table = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["word"], r["task"]) for r in table} == {("ocean", "include")}
    assert sorted(p.name for p in (out / "directions").iterdir()) == ["include_ocean.safetensors"]
    assert "Not evaluated: exclude:music:" in (out / "results.md").read_text()


def test_a_run_asks_for_less_and_a_file_covering_nothing_fails_first(tmp_path):
    cfg = ReproduceConfig("keywords", words=["ocean"], include_only=True, exclude_only=True, out=str(tmp_path / "k"), **SMALL)
    with pytest.raises(DatasetError, match="--include-only and --exclude-only exclude each other"):
        run_reproduce(cfg, say=lambda s: None)
    from workbench.experiments.coverage import evaluation_sets

    assert [s.name for s in evaluation_sets(replace(cfg, include_only=False))] == ["exclude:ocean"]
    rows = wb.load_pairs("keywords", "keywords:existence", split="test", kwargs={"keywords": ["ocean"]}).head(2)
    rows.to_jsonl(tmp_path / "inc.jsonl")
    cfg = replace(cfg, include_only=False, eval_data=str(tmp_path / "inc.jsonl"))  # exclusion only, the file has inclusion
    with pytest.raises(DatasetError, match="no row checks any instruction this keywords run evaluates"):
        run_reproduce(cfg, say=lambda s: None)
    assert not (tmp_path / "k").exists()  # before any folder, model or direction


def test_base_queries_are_phrased_as_the_builtin_rows(tiny, tmp_path):
    """A file of base queries (mapped with --fields) gives the built-in rows exactly, for length and keywords."""
    from workbench.data.builtin import rows_from_queries

    builtin = wb.load_pairs("length", "length_constraints:number_sentences", split="test", kwargs={"num_sentences": 2})
    path = write_jsonl(tmp_path / "queries.jsonl", [{"id": r.base_id, "text": r.prompt_without_instruction} for r in builtin]
                       + [{"id": "blank", "text": "  "}])
    queries, report = read_pairs_file(path, fields="key=id,query=text")
    assert report.schema == "queries" and len(queries) == len(builtin)  # the blank query is left out
    made = rows_from_queries(queries, "length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"})
    assert [(r.prompt, r.prompt_without_instruction, r.eval_kwargs) for r in made] == [
        (r.prompt, r.prompt_without_instruction, r.eval_kwargs) for r in builtin]
    cfg = ReproduceConfig("length", targets=[1], strengths=[1.0], n_eval=3, eval_data=str(path), fields="key=id,query=text",
                          out=str(tmp_path / "l"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines() if '"condition": "instruction"' in x]
    phrase = instruction_phrase("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, builtin[0].base_id)
    assert gens[0]["prompt"] == f"{builtin[0].prompt_without_instruction} {phrase}"
    for experiment in ("format", "composition"):
        with pytest.raises(DatasetError, match="holds base queries only"):
            run_reproduce(replace(cfg, experiment=experiment, targets=None, out=str(tmp_path / experiment)), say=lambda s: None)
    write_jsonl(tmp_path / "blank.jsonl", [{"query": " "}])
    with pytest.raises(DatasetError, match="no usable query"):
        read_pairs_file(tmp_path / "blank.jsonl")


def test_load_report_is_json():
    report = LoadReport(path="x", schema="paired", convention="eval", failed_rewrites=["a"])
    assert json.loads(json.dumps(report.to_dict()))["failed_rewrites"] == ["a"]


def test_direction_records_the_instruction_arguments_it_was_learned_from(tiny, tmp_path):
    from workbench.experiments.run import Run

    cfg = ReproduceConfig("format", model="tiny-random-llama", n_eval=4, batch_size=8)
    run = Run(config=cfg, model=tiny, reference=tiny, out_dir=tmp_path, memo=None, say=lambda s: None)
    rows = run.builtin("format", "detectable_format:multiple_sections", "train", 12)
    d = run.direction("sections", rows)
    used = d.extra["kwargs"]
    assert len(used) >= 3 and sum(u["rows"] for u in used) == 12
    assert {u["kwargs"]["section_spliter"] for u in used} <= {"Section", "SECTION", "PARAGRAPH", "Part"}
    d.save(tmp_path / "d.safetensors")
    assert wb.Direction.load(tmp_path / "d.safetensors").extra["kwargs"] == used


@pytest.mark.parametrize(("args", "message"), [
    (["--word", ""], "--word: a keyword must be a non-empty word or phrase"),
    (["--words-file", "EMPTY"], "no words in the file"),
    (["--eval-data", "NEITHER"], "no known schema"),
    (["--eval-data", "NEITHER", "--fields", "prompt=question"], "which line 1 lacks"),
    (["--fields", "prompt=question"], "--fields maps the fields of an --eval-data file"),
    (["--word", "ocean", "--include-only", "--exclude-only"], "--include-only and --exclude-only exclude each other"),
    (["--word", "ocean", "--eval-data", "BLANK", "--fields", "query=text"], "no usable query"),
    (["--eval-data", "QUERIES", "--fields", "query=text"], "holds base queries only"),
    (["--word", "ocean", "--eval-data", "QUERIES", "--fields", "query=question"], "which line 1 lacks"),
    (["--instruction", "language:response_language_xx"], "no built-in phrasing for language 'xx'"),
    (["--include-only"], "--include-only is for the keywords experiment"),
])
def test_reproduce_cli_bad_data_is_one_line(tmp_path, capsys, args, message):
    from workbench.cli import main

    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    write_jsonl(tmp_path / "neither.jsonl", [{"text": "hello", "label": 1}])
    write_jsonl(tmp_path / "blank.jsonl", [{"text": " "}, {"text": ""}])
    write_jsonl(tmp_path / "queries.jsonl", [{"text": "Describe a harbour at dawn."}])
    files = {"EMPTY": "empty.txt", "NEITHER": "neither.jsonl", "BLANK": "blank.jsonl", "QUERIES": "queries.jsonl"}
    args = [str(tmp_path / files[a]) if a in files else a for a in args]
    experiment = "keywords" if "--word" in args or "--words-file" in args else "format"
    assert main(["reproduce", experiment, "--model", "tiny-random-llama", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("workbench: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_figures_draw_the_intervals():
    from workbench.figures.sweeps import conditions_figure, strength_figure

    conds = [{"instruction_id": TITLE, "condition": c, "accuracy": a, "n": 20}
             for c, a in (("no_instruction", 0.0), ("no_instruction_steered", 0.35), ("instruction", 0.5), ("instruction_steered", 0.9))]
    fig = conditions_figure(conds)
    bar = fig.data[1]
    lo, hi = wilson_interval(7, 20)
    assert bar.error_y.array[0] == pytest.approx(hi - 0.35) and bar.error_y.arrayminus[0] == pytest.approx(0.35 - lo)
    sweep = [{"instruction_id": TITLE, "layer": 3, "coeff": c, "accuracy": a, "perplexity": 2.0, "n": 10}
             for c, a in ((1.0, 0.1), (2.0, 0.5))]
    fig = strength_figure(sweep, layer=3)
    lo, hi = wilson_interval(5, 10)
    assert fig.data[0].error_y.array[1] == pytest.approx(hi - 0.5)


def test_compare_runs_pairs_by_prompt(tmp_path, capsys):
    from workbench.cli import main
    from workbench.experiments.compare import compare_runs

    def run(folder: str, passes: list[bool], rep: float) -> Path:
        d = tmp_path / folder
        d.mkdir()
        gens = [{"instruction_id": TITLE, "condition": "no_instruction_steered", "base_id": f"q{i}", "strict": p,
                 "degeneration": rep, "layer": 26, "strength": 1.0} for i, p in enumerate(passes)]
        gens.append({"instruction_id": TITLE, "condition": "no_instruction", "base_id": "q0", "strict": False, "degeneration": 0.0})
        for g in gens:
            g["response"] = "text"
        write_jsonl(d / "generations.jsonl", gens)
        return d

    a = run("a", [True] * 9 + [False], 0.6)
    b = run("b", [False] * 10, 0.1)
    (row,) = compare_runs(a, b)
    assert row["n"] == 10 and row["a_acc"] == 0.9 and row["b_acc"] == 0.0 and row["a_loops"] == 9 and row["b_loops"] == 0
    assert row["p"] == pytest.approx(2 / 512)
    assert main(["compare", str(a), str(b)]) == 0 and "McNemar" in capsys.readouterr().out
    assert main(["compare", str(a), str(tmp_path)]) == 2
    assert "generations.jsonl: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(n_eval=-1), dict(n_train=2.5), dict(max_degeneration=1.5)])
def test_config_refuses_what_it_would_not_run(bad):
    with pytest.raises(WorkbenchError, match="must be a positive integer|max_degeneration"):
        ReproduceConfig("format", **bad).resolved(30)


def test_length_table_has_intervals_and_p_values(tiny, tmp_path):
    cfg = ReproduceConfig("length", targets=[1], strengths=[1.0], n_eval=3, out=str(tmp_path / "l"), **SMALL)
    out = run_reproduce(cfg, say=lambda s: None, model=tiny)
    table = list(csv.DictReader((out / "results.csv").open()))
    assert {"accuracy_lo", "accuracy_hi", "accuracy_p"} <= set(table[0])
    steered = [r for r in table if r["condition"].endswith("_steered")]
    assert steered and all(0 <= float(r["accuracy_p"]) <= 1 for r in steered)
