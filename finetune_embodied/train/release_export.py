"""Export a layout-emu35 training checkpoint as a copy of the Emu3.5 release with the trained weights.

    python -m finetune_embodied.train.release_export runs/train/dida_emu35/checkpoints/step-00000500 /models/Emu3.5-DiDA

The output is the release's own format, loaded as the release is
(``load_backend("torch", model_path=OUT, layout="emu35", trust_remote_code=True)``)::

    OUT/config.json, model-*.safetensors (+ index)   init_from's files, each weight merged (below)
    OUT/<other small files of init_from>             copied (generation config, remote code...)
    OUT/tokenizer_config.json, tokenization_emu3.py,  the text tokenizer the run used (copied beside the
        emu3.tiktoken, emu3_vision_tokens.txt         weights, so the directory stands alone)
    OUT/vision_tokenizer/                            the run's vision tokenizer (config.yaml + model.ckpt)
    OUT/dida_adapted.json                            after a dida stage: the weights decode images by DiDA

Merging goes shard by shard through init_from's safetensors files: a weight the checkpoint holds
(full fine-tuning) replaces the release's; a weight with LoRA adapters becomes
``W + (alpha / r) * B @ A`` (computed in float32, stored in the shard's dtype). Host memory holds
one shard at a time, so the 34B exports on an ordinary host. Written next to OUT and renamed into
place: an interrupted export never leaves half a model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["export_release", "main"]

_PEFT_PREFIX = "base_model.model."
_LORA_A, _LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"
_SKIP_FILES = {"dida_adapted.json", "manifest.json", "trainer_state.pt"}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}  # of init_from: never copied as they are


def _adapters(weights: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """Checkpoint weights -> ({base weight name: (A, B)}, {plain weight name: tensor})."""
    names = {k.removeprefix(_PEFT_PREFIX).replace(".base_layer.", "."): v for k, v in weights.items()}
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for k, v in names.items():
        if k.endswith(_LORA_A):
            module = k[: -len(_LORA_A)]
            b = names.get(module + _LORA_B)
            if b is None:
                raise ValueError(f"checkpoint: LoRA weight {k!r} has no lora_B partner")
            pairs[module + ".weight"] = (v, b)
        elif ".lora_" in k:
            if not k.endswith(_LORA_B):
                raise ValueError(f"checkpoint: LoRA weight {k!r} is of a kind this export does not merge (linear layers only)")
        else:
            plain[k] = v
    return pairs, plain


def _shards(base: Path) -> list[str]:
    index = base / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return ["model.safetensors"]


def export_release(checkpoint: str | Path, out: str | Path, init_from: str | Path | None = None) -> Path:
    """Merge a layout-emu35 checkpoint into a copy of its release (``init_from``, default the one it
    trained from) at ``out``; returns ``out``. ValueError (one line) for a checkpoint of another layout
    or weights that do not fit the release."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from finetune_embodied.train.checkpoint import load_checkpoint
    from model_runtime.backends.torch_backend import write_dida_marker

    ck = load_checkpoint(checkpoint)
    meta: dict[str, Any] = ck["config"]
    model_doc, train = meta.get("model") or {}, meta.get("train") or {}
    if (model_doc.get("layout") or {}).get("name") != "emu35" or "release" not in model_doc:
        raise ValueError(f"checkpoint {str(checkpoint)!r} is not from a layout-emu35 stage (a compact-layout model exports"
                         " with finetune_embodied.default_model.export_model)")  # fmt: skip
    release = model_doc["release"]
    base = Path(init_from or release["init_from"])
    lora = model_doc.get("lora") or {}
    scaling = float(lora.get("alpha", 1)) / float(lora.get("r", 1))
    pairs, plain = _adapters(ck["weights"])
    if not pairs and not plain:
        raise ValueError(f"checkpoint {str(checkpoint)!r} holds no weights")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    used: set[str] = set()
    for shard in _shards(base):
        tensors = {}
        with safe_open(str(base / shard), framework="pt") as f:
            names = list(f.keys())  # a safe_open handle is not iterable
            for name in names:
                w = f.get_tensor(name)
                if name in plain:  # fully trained weight
                    new = plain[name].to(w.dtype)
                    used.add(name)
                else:
                    new = w
                if name in pairs:  # W + (alpha / r) * B @ A
                    a, b = pairs[name]
                    new = (new.float() + scaling * (b.float() @ a.float())).to(w.dtype)
                    used.add(name)
                if new.shape != w.shape:
                    raise ValueError(f"checkpoint weight {name!r} has shape {tuple(new.shape)}, {base} has {tuple(w.shape)}")
                tensors[name] = new.contiguous()
        save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
    # Tied or derived entries (lm_head tied to the embedding) may be absent from the release's files.
    unused = sorted((set(pairs) | set(plain)) - used - {"lm_head.weight"})
    if unused:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"checkpoint weights not in {base}: {unused[:3]} (a checkpoint of another release?)")
    for src in sorted(base.iterdir()):  # config.json (the release's own), index, remote code, generation config
        if src.is_file() and src.suffix not in _WEIGHT_SUFFIXES and src.name not in _SKIP_FILES:
            shutil.copy2(src, tmp / src.name)
    text_dir = Path(release["text_tokenizer"])
    if text_dir.resolve() != base.resolve():
        for src in sorted(text_dir.iterdir()):
            if src.is_file() and not (tmp / src.name).exists():  # never over the release's config.json
                shutil.copy2(src, tmp / src.name)
    shutil.copytree(release["vision_tokenizer"], tmp / "vision_tokenizer")
    if meta.get("stage") == "dida":
        dida = train.get("dida") or {}
        write_dida_marker(tmp, stage="dida", step=meta.get("step"), noise=dida.get("noise"), init_from=str(base),
                          checkpoint=str(Path(checkpoint).resolve()), image_size=release.get("image_size"),
                          lora={k: lora.get(k) for k in ("r", "alpha", "target_modules")} if lora.get("enabled") else None)  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune_embodied.train.release_export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a layout-emu35 training checkpoint (runs/train/<name>/checkpoints/step-XXXXXXXX)")
    parser.add_argument("out", help="output directory (a copy of the release with the trained weights)")
    parser.add_argument("--init-from", default=None, help="the release directory (default: the one the run trained from)")
    args = parser.parse_args(argv)
    from finetune_embodied.train.checkpoint import CheckpointError

    try:
        out = export_release(args.checkpoint, args.out, args.init_from)
    except (ValueError, CheckpointError, OSError) as exc:
        print(f"release_export: {exc}")
        return 2
    adapted = (out / "dida_adapted.json").is_file()
    print(f"exported {out} ({'DiDA-adapted' if adapted else 'next-token'}); load it with "
          f"load_backend('torch', model_path='{out}', layout='emu35', trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
