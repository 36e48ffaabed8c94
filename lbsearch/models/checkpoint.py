"""Reading released LanguageBind checkpoints: where they are, what tensors they hold, and LoRA merging.

A checkpoint is a folder (or Hugging Face hub repo) with ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin`` (possibly sharded with an ``*.index.json``). LoRA checkpoints store unmerged
``lora_A``/``lora_B`` pairs under peft's key names; we merge them into the base weights at load
(``W + (alpha / r) B A``) so inference runs plain linear layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from lbsearch.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# Old peft (the release the official code pins) wraps the whole encoder; new peft adds `.base_layer`.
_PEFT_WRAPPER = "encoder.base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.default)?\.weight$")
# Buffers some exports carry; never parameters.
_IGNORED = re.compile(r"(^|\.)position_ids$")


@dataclass(frozen=True)
class CheckpointFiles:
    folder: Path
    source: str  # what the user named: a folder or a hub id
    revision: str | None


def resolve(
    name_or_path: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
) -> CheckpointFiles:
    """Find a checkpoint: a local folder, else a hub repo id fetched (or read from cache) by huggingface_hub.

    ``HF_HUB_OFFLINE=1`` makes huggingface_hub read only its cache; ``cache_dir`` (or ``HF_HUB_CACHE``)
    chooses where that cache lives.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return CheckpointFiles(path, str(name_or_path), revision)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: not a checkpoint folder, and not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=["config.json", *WEIGHT_FILES, *INDEX_FILES, "*.safetensors", "pytorch_model*.bin"],
        )
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{name}: not in the local Hugging Face cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); download it on a connected machine "
            f"with `lbsearch models download {name}` or point to a local folder"
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"{name}: cannot fetch from the Hugging Face hub: {exc}") from exc
    return CheckpointFiles(Path(folder), name, revision)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, on the CPU. ``.bin`` files are read with ``weights_only``."""
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in _shard_names(index):
                state.update(_read_weight_file(folder / shard))
            return state
    for weight_name in WEIGHT_FILES:
        if (folder / weight_name).is_file():
            return _read_weight_file(folder / weight_name)
    raise CheckpointError(f"{folder}: no weights found (looked for {', '.join(WEIGHT_FILES + INDEX_FILES)})")


def _shard_names(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names, each a plain relative path inside its folder.

    Checked by name, not by resolving: the Hugging Face cache keeps shards as symlinks to blobs outside the
    snapshot folder, while a name that is absolute or climbs with ``..`` would read any file on the machine."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a readable shard index (a JSON object with a weight_map): {exc}") from exc
    for name in names:
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in parts[0]:
            raise CheckpointError(f"{index}: shard {name!r} is not a file inside the checkpoint folder")
    return names


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the readers raise many kinds (pickle, zip, safetensors) for a bad file
        raise CheckpointError(f"{path}: cannot read weights: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors (a state dict)")
    return state


def normalise_keys(state: dict[str, torch.Tensor], lora_scaling: float) -> dict[str, torch.Tensor]:
    """Map old/new peft names onto plain ones and merge every LoRA pair into its base weight."""
    plain: dict[str, torch.Tensor] = {}
    lora: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if _IGNORED.search(key):
            continue
        key = key.replace(_PEFT_WRAPPER, "encoder.").replace(".base_layer.", ".")
        match = _LORA_KEY.match(key)
        if match:
            lora.setdefault(match["module"], {})[match["which"]] = tensor
        else:
            plain[key] = tensor
    for module, pair in lora.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"LoRA weights for {module} are incomplete: found only lora_{''.join(pair)}")
        base_key = f"{module}.weight"
        if base_key not in plain:
            raise CheckpointError(f"LoRA weights for {module} have no base weight {base_key}")
        a, b = pair["A"].double(), pair["B"].double()
        base = plain[base_key]
        if (b.shape[0], a.shape[1]) != tuple(base.shape) or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"LoRA shapes for {module} do not fit: A {tuple(a.shape)}, B {tuple(b.shape)}, base {tuple(base.shape)}"
            )
        plain[base_key] = (base.double() + lora_scaling * (b @ a)).to(base.dtype)
    return plain


def lora_rank(state: dict[str, torch.Tensor]) -> int | None:
    """The rank of the LoRA pairs in a raw state dict, or None when it has none."""
    for key, tensor in state.items():
        if _LORA_KEY.match(key.replace(_PEFT_WRAPPER, "encoder.")) and ".lora_A" in key:
            return int(tensor.shape[0])
    return None


def split_towers(state: dict[str, torch.Tensor]) -> tuple[dict, dict, torch.Tensor | None]:
    """Split a normalised state dict into (modality tower, text tower, logit_scale)."""
    vision, text = {}, {}
    logit_scale = state.get("logit_scale")
    for key, tensor in state.items():
        if key.startswith(("vision_model.", "visual_projection.")):
            vision[key] = tensor
        elif key.startswith(("text_model.", "text_projection.")):
            text[key] = tensor
        elif key != "logit_scale":
            vision[key] = tensor  # reported as unexpected by the strict load
    return vision, text, logit_scale


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error listing them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                shown = "\n    ".join(keys[:40]) + (f"\n    ... and {len(keys) - 40} more" if len(keys) > 40 else "")
                parts.append(f"  {title} ({len(keys)}):\n    {shown}")
        raise CheckpointError(f"{what}: checkpoint does not match the architecture in config.json\n" + "\n".join(parts))
    module.load_state_dict(state, strict=True)


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a set of tensors, to tell whether two checkpoints share a tower."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().contiguous().cpu()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
