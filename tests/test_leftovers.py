"""Issue #15's leftovers: errors that live in ``workbench.errors``, one JSONL reader, lm-eval steer files, GGUF header."""

from __future__ import annotations

import pickle

import pytest

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
