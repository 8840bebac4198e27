"""argparse types and parsed flag values that ``workbench``'s subcommand modules share with :mod:`workbench.cli`:
counts, devices, output files and folders, ``--layers`` against a model's layer count, ``--kwargs`` JSON.
Each checks its value in one line before any work starts (the values themselves: :mod:`workbench.arguments`).

>>> parser.add_argument("--out", type=folder_arg(), default="figures")
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from .arguments import check_text, int_list
from .errors import WorkbenchError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--max-new-tokens 0`` is an error, not a fallback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def device_arg(text: str) -> str:
    """argparse type: a device this machine has (``cuda`` on a CPU-only torch fails here, before any work)."""
    from .models.loading import check_device

    try:
        return check_device(text)
    except WorkbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _output_path(text: str, check: Callable[[str], Any], flag: str = "--out") -> str:
    """``text`` once ``check`` (an ``io`` output check) accepts it; its one-line error, as argparse reports it, otherwise."""
    try:
        check(text)
    except WorkbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag} {text}: ")) from None
    return text


def output_file(text: str) -> str:
    """argparse type: a file path that is not a folder and can be written (checked before any work)."""
    from .io import check_output_file

    return _output_path(text, check_output_file)


def optional_output_file(text: str) -> str:
    """argparse type: like :func:`output_file`, but ``''`` (write no file) is allowed."""
    return text if text == "" else output_file(text)


def folder_arg(flag: str = "--out"):
    """argparse type for an output folder named by ``flag``: not a file, not under a file, writable (before any work)."""
    def check(text: str) -> str:
        from .io import check_output_dir

        return _output_path(text, lambda t: check_output_dir(t, flag), flag)

    check.__name__ = "folder"  # argparse names the type in its messages
    return check


def layers_arg(text: str | None, model: str, flag: str = "--layers") -> list[int] | None:
    """``--layers`` checked against ``model``'s layer count (read from its config, before the slow load)."""
    if text is None:
        return None
    from .models.loading import layer_count

    return int_list(text, flag, limit=layer_count(model))


def parse_kwargs(text: str | None) -> dict | None:
    """``--kwargs`` JSON text as a dict (None stays None); anything but a JSON object is a one-line error."""
    if text is None:
        return None
    check_text(text, "--kwargs")  # a word with invalid UTF-8 would fail in the tokenizer, after the model loads
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"--kwargs is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise WorkbenchError("--kwargs must be a JSON object, e.g. '{\"keywords\": [\"ocean\"]}'")
    return value
