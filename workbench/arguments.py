"""List-valued command-line arguments shared by every ``workbench`` subcommand (``--layers 10,12,20-24``)."""

from __future__ import annotations

from .errors import WorkbenchError


def int_list(text: str | None, flag: str = "--layers") -> list[int] | None:
    """``"10,12,20-24"`` -> ``[10, 12, 20, 21, 22, 23, 24]``; None stays None."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise WorkbenchError(f"{flag}: cannot read {text!r} (use e.g. 10,12,20-24)") from None
    return out


def float_list(text: str | None, flag: str = "--strengths") -> list[float] | None:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]``; None stays None."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise WorkbenchError(f"{flag}: cannot read {text!r} (use e.g. 1,2,4)") from None
