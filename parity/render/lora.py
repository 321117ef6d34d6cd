"""LoRA arithmetic: the low-rank updates of a LoRA file, merged into weights or run beside
them the way ai-toolkit runs them, and moved within a saved file's rounding.

Files are read, and their keys audited, by :mod:`parity.job.lora_files`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from parity.job.lora_files import TEXT_ENCODER_PREFIXES, LoraFormat, module_and_part, strip_prefix

if TYPE_CHECKING:
    import torch


# ----------------------------------------------------------------------- arithmetic


@dataclass(frozen=True)
class ModuleDelta:
    """One module's low-rank update.

    Attributes
    ----------
    format:
        LoRA or LoKr.
    first, second:
        LoRA: ``A`` (down, rank x in) and ``B`` (up, out x rank). LoKr: ``w1`` and ``w2``.
    scale:
        ``alpha / rank`` where the file says so, else 1.
    """

    format: LoraFormat
    first: torch.Tensor
    second: torch.Tensor
    scale: float = 1.0

    def is_zero(self) -> bool:
        """ai-toolkit skips merging an update whose factors are all zero (a step-0 LoRA)."""
        return not (bool(self.first.any()) and bool(self.second.any()))

    def weight(self, multiplier: float) -> torch.Tensor:
        """``multiplier`` times the dense update, float32 (what a merge adds to ``W``)."""
        import torch

        a, b = self.first.float(), self.second.float()
        if self.format is LoraFormat.LOKR:
            return torch.kron(a, b) * self.scale * multiplier
        return multiplier * (b @ a) * self.scale

    def output(self, x: torch.Tensor, multiplier: torch.Tensor, out_dtype: Any) -> torch.Tensor:
        """The update's contribution to a layer's output for input ``x``, as ai-toolkit's
        network computes it beside the base layer, in ``out_dtype``.

        LoRA runs in float32 (the training weights' dtype): ``B(A x)`` times scale and
        multiplier, then cast. LoKr runs in the output's dtype: ``x`` reshaped to the two
        Kronecker factors' input sizes and contracted with ``w2`` then ``w1``.
        """
        import torch

        if self.format is LoraFormat.LOKR:
            w1 = (self.first * self.scale).to(out_dtype)
            w2 = self.second.to(out_dtype)
            grid = x.to(out_dtype).unflatten(-1, (w1.shape[1], w2.shape[1]))
            y = torch.einsum("...qs,os->...qo", grid, w2)
            y = torch.einsum("...qo,pq->...po", y, w1).flatten(-2)
            return y * multiplier.mean().to(out_dtype)
        a, b = self.first.float(), self.second.float()
        y = torch.nn.functional.linear(torch.nn.functional.linear(x.to(torch.float32), a), b)
        y = y * self.scale
        return (y * multiplier.reshape((-1,) + (1,) * (y.dim() - 1))).to(out_dtype)


def module_deltas(state: Mapping[str, torch.Tensor]) -> dict[str, ModuleDelta]:
    """Map module names (transformer prefix stripped) to their updates.

    Keys of other modules or formats (text encoder, DoRA magnitudes, LoHa) are left out;
    :func:`audit_keys` says what they are.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        parsed = module_and_part(key)
        if parsed is not None:
            parts.setdefault(parsed[0], {})[parsed[1]] = tensor
    out: dict[str, ModuleDelta] = {}
    for module, p in parts.items():
        if module.startswith(TEXT_ENCODER_PREFIXES):
            continue
        name = strip_prefix(module)
        alpha = float(p["alpha"]) if "alpha" in p else None
        if "down" in p and "up" in p:
            rank = p["down"].shape[0]
            scale = alpha / rank if alpha is not None else 1.0
            out[name] = ModuleDelta(LoraFormat.LORA, p["down"], p["up"], scale)
        elif any(k.startswith("lokr") for k in p):
            w1, rank1 = _lokr_factor(p, "lokr_w1")
            w2, rank2 = _lokr_factor(p, "lokr_w2")
            if w1 is None or w2 is None:
                continue
            rank = rank1 or rank2
            # Full factors mean scale 1 (ai-toolkit's lokr_full_rank stores alpha 1e10).
            scale = alpha / rank if (alpha is not None and rank) else 1.0
            out[name] = ModuleDelta(LoraFormat.LOKR, w1, w2, scale)
    return out


def _lokr_factor(parts: Mapping[str, Any], name: str) -> tuple[Any, int | None]:
    """A LoKr factor, full or as its two low-rank halves; with the rank of the halves."""
    if name in parts:
        return parts[name], None
    a, b = parts.get(f"{name}_a"), parts.get(f"{name}_b")
    if a is None or b is None:
        return None, None
    return a @ b, int(b.shape[0])


def perturb_within_rounding(
    state: Mapping[str, torch.Tensor], *, seed: int
) -> dict[str, torch.Tensor]:
    """``state`` in float32 with every value moved uniformly within its own rounding.

    A bf16 or fp16 file holds roundings of float32 training weights; each value ``v``
    stands for any float32 value closer to ``v`` than to its neighbours in the file's
    format (half the gap to each, which differ at powers of two). Rendering with such a
    perturbed copy shows how much the rounding alone can move a render. Every perturbed
    value rounds back to ``v``; zeros and float32 tensors come back unchanged.
    Deterministic for a given ``seed``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        tensor = state[key]
        value = tensor.float()
        if tensor.dtype in (torch.bfloat16, torch.float16) and tensor.numel():
            # Both formats are 16-bit sign-magnitude: the raw bits +-1 are the neighbours
            # away from zero and towards it.
            bits = tensor.contiguous().view(torch.int16)
            away = (bits + 1).view(tensor.dtype).float()
            toward = (bits - 1).view(tensor.dtype).float()
            half_away, half_toward = (away - value) / 2, (value - toward) / 2
            draw = torch.rand(value.shape, generator=generator) * 2 - 1
            # Strictly inside the interval, so that round-to-nearest-even gives v back.
            step = torch.where(draw >= 0, draw * half_away, draw * half_toward) * (1 - 2**-6)
            finite = torch.isfinite(away) & torch.isfinite(toward) & (value != 0)
            value = torch.where(finite, value + step, value)
        out[key] = value
    return out
