"""Writers of LoRA files for tests, in the format ai-toolkit saves for Z-Image.

ai-toolkit saves a Z-Image LoRA as safetensors with PEFT-style keys
``diffusion_model.<module>.lora_A.weight`` (rank x in) and ``.lora_B.weight`` (out x rank)
for the Linear modules of the transformer's main ``layers.*`` blocks, no alpha keys (so the
effective alpha is the rank and the LoRA scale is 1), and string metadata:

- ``training_info``: JSON ``{"step": N, "epoch": E}``;
- ``ss_base_model_version``: ``"zimage"``; ``ss_output_name`` and ``name``: the job name;
- ``ss_tag_frequency``: JSON of the dataset's tag counts;
- ``software``: JSON ``{"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit",
  "version": V}``;
- ``format``: ``"pt"``; ``version``: ``"1.0"``;
- ``sshs_model_hash``: SHA-256 (hex) of the file's tensor data (the bytes after the header);
  ``sshs_legacy_hash``: first 8 hex digits of the SHA-256 of the 64 KiB at offset 1 MiB of
  that file, which for files under 1 MiB is the hash of no bytes, ``e3b0c442``.

The files written here are byte-deterministic: tensors and metadata keys are sorted.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

#: Linear modules of each main transformer block that ai-toolkit trains for Z-Image.
BLOCK_TARGETS: tuple[str, ...] = (
    "attention.to_q",
    "attention.to_k",
    "attention.to_v",
    "attention.to_out.0",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
    "adaLN_modulation.0",
)

AITK_REPO = "https://github.com/ostris/ai-toolkit"

_ADALN_EMBED_DIM = 256
_DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _linear_shapes(transformer_or_config: Any) -> dict[str, tuple[int, int]]:
    """Map ``layers.<i>.<target>`` to (in_features, out_features) of every LoRA target."""
    import torch

    if isinstance(transformer_or_config, torch.nn.Module):
        shapes = {}
        for name, module in transformer_or_config.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("layers."):
                # A module already wrapped by PEFT keeps its Linear as ``base_layer``.
                name = name.removesuffix(".base_layer")
                shapes[name] = (module.in_features, module.out_features)
        return shapes
    config: Mapping[str, Any]
    if isinstance(transformer_or_config, (str, Path)):
        path = Path(transformer_or_config)
        for candidate in (path, path / "config.json", path / "transformer" / "config.json"):
            if candidate.is_file():
                config = json.loads(candidate.read_text(encoding="utf-8"))
                break
        else:
            raise FileNotFoundError(f"no transformer config.json found at {path}")
    elif isinstance(transformer_or_config, Mapping):
        config = transformer_or_config
    else:
        raise TypeError(
            "transformer_or_config must be a transformer module, a config mapping or a path, "
            f"got {type(transformer_or_config).__name__}"
        )
    dim = int(config["dim"])
    hidden = int(dim / 3 * 8)
    per_block = {
        "attention.to_q": (dim, dim),
        "attention.to_k": (dim, dim),
        "attention.to_v": (dim, dim),
        "attention.to_out.0": (dim, dim),
        "feed_forward.w1": (dim, hidden),
        "feed_forward.w2": (hidden, dim),
        "feed_forward.w3": (dim, hidden),
        "adaLN_modulation.0": (min(dim, _ADALN_EMBED_DIM), 4 * dim),
    }
    return {
        f"layers.{i}.{target}": shape
        for i in range(int(config["n_layers"]))
        for target, shape in per_block.items()
    }


def _serialize(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> tuple[bytes, int]:
    """Return safetensors bytes (sorted tensors and metadata keys) and the header's size."""
    import torch

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks = []
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous().cpu()
        dtype = _DTYPE_NAMES[str(tensor.dtype).removeprefix("torch.")]
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    prefix = struct.pack("<Q", len(raw)) + raw
    return prefix + b"".join(chunks), len(prefix)


def _save_safetensors(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Write a byte-deterministic safetensors file atomically."""
    blob, _ = _serialize(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


def _hashes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> tuple[str, str]:
    """Return (``sshs_model_hash``, ``sshs_legacy_hash``) as ai-toolkit stamps them.

    Both are taken from the file as it would be saved with only the ``ss_`` metadata: the
    model hash is the SHA-256 of the tensor data, the legacy hash the first 8 hex digits of
    the SHA-256 of the 64 KiB at offset 1 MiB (no bytes for smaller files).
    """
    blob, header_size = _serialize(
        tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")}
    )
    model_hash = hashlib.sha256(blob[header_size:]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def lokr_factors(dimension: int) -> tuple[int, int]:
    """``(m, n)`` with ``m * n == dimension``, ``m <= n`` and ``m`` as large as possible:
    the split LyCORIS and ai-toolkit use for a LoKr factor with ``lokr_factor: -1``."""
    m = max(d for d in range(1, int(dimension**0.5) + 1) if dimension % d == 0)
    return m, dimension // m


def write_aitk_lora(
    path: str | Path,
    transformer_or_config: Any,
    *,
    kind: str = "lora",
    rank: int = 4,
    seed: int = 0,
    scale_b: float = 0.05,
    step: int = 20,
    epoch: int = 4,
    name: str | None = None,
    aitk_version: str = "0.12.26",
    dtype: Any = None,
    targets: Iterable[str] | None = None,
    zero_b: bool = False,
    key_prefix: str | Callable[[str], str] = "diffusion_model.",
    extra_keys: Mapping[str, Any] | None = None,
    tag_frequency: Mapping[str, Mapping[str, int]] | None = None,
) -> Path:
    """Write a random LoRA for a Z-Image transformer in ai-toolkit's file format.

    Parameters
    ----------
    path
        Output ``.safetensors`` file (parent folders are created).
    transformer_or_config
        A ``ZImageTransformer2DModel``, its config as a mapping (``dim``, ``n_layers``), or a
        path to a checkpoint folder, its ``transformer/`` folder or its ``config.json``.
    rank
        LoRA rank; no alpha keys are written, so the effective alpha equals the rank.
    seed
        Seed of the random A and B matrices.
    scale_b
        Standard deviation of B's entries (A's is ``1/sqrt(in_features)``). The default
        changes a 64x64 render of the tiny models clearly at LoRA scale 1.
    step, epoch
        Written to the ``training_info`` metadata.
    name
        Job name for ``name`` and ``ss_output_name``; defaults to the file's stem with any
        ``_<step>`` suffix removed, as ai-toolkit names its checkpoints.
    aitk_version
        ai-toolkit version stamped in the ``software`` metadata.
    dtype
        ``torch.float32`` (default), ``torch.float16`` or ``torch.bfloat16``.
    targets
        Module names relative to the transformer (``layers.0.attention.to_q``, ...) or
        suffixes of them (``attention.to_q``); default: every target of every main block.
    zero_b
        Write zero B matrices, as ai-toolkit's step-0 LoRA (no effect on images).
    key_prefix
        Prefix of every key, or a function of the module name giving it (to mix prefixes).
    kind
        ``"lora"``: ``lora_A``/``lora_B`` keys. ``"lokr"``: ai-toolkit's full-rank LoKr
        (``lokr_full_rank: true, lokr_factor: -1``): ``lokr_w1`` (out_m x in_m),
        ``lokr_w2`` (out_n x in_n) and ``alpha`` 1e10, with each size split by
        :func:`lokr_factors`; ``rank`` is then unused.
    extra_keys
        More tensors to add as they are (keys the server drops, another trainer's...).
    tag_frequency
        Dataset tag counts for ``ss_tag_frequency``; default ``{"1_<name>": {}}``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``rank`` < 1 or ``targets`` selects no module.
    """
    import torch

    path = Path(path)
    dtype = torch.float32 if dtype is None else dtype
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank} (for {path})")
    shapes = _linear_shapes(transformer_or_config)
    selected = {
        module: shape
        for module, shape in shapes.items()
        if module.split(".", 2)[2] in BLOCK_TARGETS
        and (targets is None or any(module == t or module.endswith("." + t) for t in targets))
    }
    if not selected:
        raise ValueError(f"no LoRA target module selected for {path} (targets={targets!r})")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module in sorted(selected):
        in_features, out_features = selected[module]
        prefix = key_prefix(module) if callable(key_prefix) else key_prefix
        if kind == "lokr":
            (out_m, out_n), (in_m, in_n) = lokr_factors(out_features), lokr_factors(in_features)
            w1 = torch.randn(out_m, in_m, generator=generator) / in_m**0.5
            w2 = torch.randn(out_n, in_n, generator=generator) * scale_b / in_n**0.5
            if zero_b:
                w2.zero_()
            tensors[f"{prefix}{module}.lokr_w1"] = w1.to(dtype)
            tensors[f"{prefix}{module}.lokr_w2"] = w2.to(dtype)
            tensors[f"{prefix}{module}.alpha"] = torch.tensor(9999999999.0).to(dtype)
            continue
        lora_a = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        lora_b = torch.randn(out_features, rank, generator=generator) * scale_b
        if zero_b:
            lora_b.zero_()
        tensors[f"{prefix}{module}.lora_A.weight"] = lora_a.to(dtype)
        tensors[f"{prefix}{module}.lora_B.weight"] = lora_b.to(dtype)
    tensors.update(extra_keys or {})
    if name is None:
        stem = path.stem
        head, _, tail = stem.rpartition("_")
        name = head if head and tail.isdigit() else stem
    tags = {f"1_{name}": {}} if tag_frequency is None else tag_frequency
    metadata = {
        "format": "pt",
        "name": name,
        "software": json.dumps({"name": "ai-toolkit", "repo": AITK_REPO, "version": aitk_version}),
        "ss_base_model_version": "zimage",
        "ss_output_name": name,
        "ss_tag_frequency": json.dumps(tags),
        "training_info": json.dumps({"step": step, "epoch": epoch}),
        "version": "1.0",
    }
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = _hashes(tensors, metadata)
    _save_safetensors(path, tensors, metadata)
    return path


def write_foreign_lora(path: str | Path, *, rank: int = 4, seed: int = 0) -> Path:
    """Write a Flux-style LoRA whose keys match no Z-Image module.

    The keys (``transformer.single_transformer_blocks.<i>.attn.to_q.lora_A.weight``, ...)
    name modules a Z-Image transformer does not have, so loading it into a Z-Image pipeline
    applies nothing (or is refused, depending on the loader).

    Parameters
    ----------
    path
        Output ``.safetensors`` file.
    rank
        LoRA rank.
    seed
        Seed of the random matrices.

    Returns
    -------
    Path
        ``path``.
    """
    import torch

    path = Path(path)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(2):
        for module in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"):
            base = f"transformer.single_transformer_blocks.{i}.{module}"
            tensors[f"{base}.lora_A.weight"] = torch.randn(rank, 64, generator=generator) * 0.1
            tensors[f"{base}.lora_B.weight"] = torch.randn(64, rank, generator=generator) * 0.1
    metadata = {
        "format": "pt",
        "name": path.stem,
        "software": json.dumps({"name": "ai-toolkit", "repo": AITK_REPO, "version": "0.12.26"}),
        "ss_base_model_version": "flux.1",
        "ss_output_name": path.stem,
        "training_info": json.dumps({"step": 10, "epoch": 1}),
        "version": "1.0",
    }
    _save_safetensors(path, tensors, metadata)
    return path
