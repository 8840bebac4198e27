"""Command-line values shared by every ``workbench`` subcommand: lists (``--layers 10,12,20-24``), finite
numbers, seeds and user text, each checked in one line before any work starts."""

from __future__ import annotations

import argparse
import math
import numbers
import sys
from typing import Any, Iterable

from .errors import WorkbenchError

# No model has anywhere near this many layers (or sentence targets): a range past it is a typo, refused before
# it is expanded in memory (``--layers 0-99999999999`` would otherwise take all RAM).
MAX_LIST_VALUE = 100_000

# torch.manual_seed takes 64-bit seeds; generation adds the batch's start index, so stay one bit below.
SEED_RANGE = (-(2**63), 2**63 - 1)


def int_list(text: str | None, flag: str = "--layers", limit: int | None = None) -> list[int] | None:
    """``"10,12,20-24"`` -> ``[10, 12, 20, 21, 22, 23, 24]``; None stays None.

    Every value must lie in ``0 .. limit - 1`` (``limit``: e.g. the model's layer count; default
    :data:`MAX_LIST_VALUE`), checked on the range's ends before it is expanded.
    """
    if text is None:
        return None
    bound = MAX_LIST_VALUE if limit is None else limit
    parts: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                parts.append((int(lo), int(hi)))
            else:
                parts.append((int(part), int(part)))
    except ValueError:
        raise WorkbenchError(f"{flag}: cannot read {text!r} (use e.g. 10,12,20-24)") from None
    for lo, hi in parts:
        if lo > hi:
            raise WorkbenchError(f"{flag}: the range {lo}-{hi} runs backwards (use {hi}-{lo})")
        if hi >= bound:
            what = f"this model has layers 0..{bound - 1}" if limit is not None else f"values must be below {bound}"
            raise WorkbenchError(f"{flag}: {hi if lo == hi else f'{lo}-{hi}'} is out of range ({what})")
    return [x for lo, hi in parts for x in range(lo, hi + 1)]


def float_list(text: str | None, flag: str = "--strengths") -> list[float] | None:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]``; None stays None; NaN and infinities are refused."""
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise WorkbenchError(f"{flag}: cannot read {text!r} (use e.g. 1,2,4)") from None
    bad = [x for x in values if not math.isfinite(x)]
    if bad:
        raise WorkbenchError(f"{flag}: {bad[0]} is not a finite number")
    return values


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An integer argument ``>= minimum`` (``max_new_tokens``, ``batch_size``...), else a one-line error.

    A one-element integer tensor counts as an integer (torch is not imported here for it: a tensor exists only
    once torch is)."""
    torch = sys.modules.get("torch")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
        torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
    ):
        raise WorkbenchError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise WorkbenchError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_prompts(prompts: Any, who: str, error: type[WorkbenchError] = WorkbenchError) -> list[str]:
    """``prompts`` as a non-empty list (a single string is one prompt), or one line from ``who`` naming the problem."""
    if prompts is None or isinstance(prompts, (bytes, dict)) or not isinstance(prompts, (str, Iterable)):
        raise error(f"{who}: prompts must be a string or a list of strings, got {type(prompts).__name__}")
    out = [prompts] if isinstance(prompts, str) else list(prompts)
    if not out:
        raise error(f"{who}: no prompts given")
    return out


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``, ``inf`` and ``1e999`` are errors, not values)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def check_seed(value: object, flag: str = "seed") -> int:
    """A seed torch can take (a 64-bit integer), else a one-line ``WorkbenchError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkbenchError(f"{flag} must be an integer, got {value!r}")
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise WorkbenchError(f"{flag} must lie in {SEED_RANGE[0]}..{SEED_RANGE[1]} (a 64-bit seed), got {value}")
    return value


def seed_arg(text: str) -> int:
    """argparse type: an integer seed in torch's range."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    except WorkbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("seed ")) from None


def check_text(text: str, what: str = "text") -> str:
    """``text`` if it is valid Unicode (no lone surrogates, which is how Python keeps invalid UTF-8 bytes of argv)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        detail = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"lone surrogate U+{bad:04X}"
        raise WorkbenchError(f"{what} is not valid UTF-8 ({detail} at character {exc.start}); pass UTF-8 text") from None
    return text


def text_arg(text: str) -> str:
    """argparse type: user text that is valid UTF-8 (the shell may pass any bytes)."""
    try:
        return check_text(text, "the text")
    except WorkbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class RecordGiven(argparse.Action):
    """argparse action: store the value and note the flag in ``namespace.given``, so that a flag given by hand can
    be told from its default (and refused where the run would not use it, see :func:`check_given_flags`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def check_given_flags(args: argparse.Namespace) -> None:
    """Refuse flags given by hand that the rest of the command line makes unused (they would be silently ignored)."""
    given = getattr(args, "given", set())
    if "layer_stride" in given and getattr(args, "layers", None):
        raise WorkbenchError("--layer-stride spaces the default layer grid; --layers gives the layers: pass one of them")
    if "search_keep" in given and getattr(args, "search", None) != "fast":
        raise WorkbenchError("--search-keep is for --search fast (the full search decodes every layer)")
