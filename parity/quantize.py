"""Weight quantization of the preview side, as ai-toolkit applies it.

ai-toolkit (``model.quantize``, ``model.qtype``, default ``qfloat8``) quantizes the
Z-Image transformer's weights with optimum-quanto after loading it in the training dtype:
every ``nn.Linear`` of the transformer except those under ``t_embedder``,
``cap_embedder``, ``all_x_embedder``, ``all_final_layer`` and ``siglip_embedder``
(:data:`TRANSFORMER_EXCLUDE`), then freezes them (weights stored quantized, activations
left in the compute dtype). ``model.quantize_te`` (default: ``quantize``) quantizes every
linear of the text encoder with ``model.qtype_te`` (default ``qfloat8``) the same way. The
LoRA network is never merged into a quantized base; it runs beside it in full precision.

Some of ai-toolkit's qtypes cannot be reproduced here and raise
:class:`QuantizationUnavailableError`: the torchao types (``float8``, ``int8``; ai-toolkit
switches ``qfloat8`` to torchao ``float8`` when an assistant LoRA or layer offloading is
used, see :func:`preview_qtypes`), ai-toolkit's own backends (``uint2`` ... ``uint8``,
``orbit*``, ``orbitvq*``, ``convrot*``, ``nvfp4``) and the accuracy recovery adapter form
``qtype|adapter``.

Order with a LoRA
-----------------
Attach the PEFT LoRA (``pipe.load_lora_weights``) first, then call
:func:`quantize_transformer`: the LoRA's ``lora_A``/``lora_B`` linears are excluded
(:data:`ADAPTER_EXCLUDE`) so they stay in full precision, while the wrapped
``base_layer`` linears are quantized, which is ai-toolkit's arrangement. The adapter
scale can still be changed afterwards with
``diffusers.utils.peft_utils.set_weights_and_activate_adapters``; scale 0 gives exactly
the quantized base model. Checked on CPU with optimum-quanto 0.2.7, torch 2.13,
diffusers 0.42.1 and peft 0.18.1 (loading the LoRA into an already quantized transformer
also worked there, with bit-identical renders, but attach-then-quantize is the order this
module is tested with). Do not fuse a LoRA into a quantized transformer: ai-toolkit never
does (it keeps ``can_merge_in`` False when quantizing), and ``fuse_lora`` on quanto
weights does not give the quantized-base-plus-delta result.

Quantization uses the weights in the dtype the module has when it is called; ai-toolkit
quantizes in the training dtype (``train.dtype``, usually bf16), so cast first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from parity.errors import (  # noqa: F401 - re-exported
    QuantizationError,
    QuantizationUnavailableError,
    UnknownQtypeError,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: optimum-quanto weight qtypes ai-toolkit passes through to quanto by name.
QUANTO_QTYPES: tuple[str, ...] = (
    "qfloat8",
    "qfloat8_e4m3fn",
    "qfloat8_e4m3fnuz",
    "qfloat8_e5m2",
    "qint8",
    "qint4",
    "qint2",
)

#: ai-toolkit qtypes handled by torchao.
TORCHAO_QTYPES: tuple[str, ...] = ("float8", "int8")

#: ai-toolkit qtypes handled by its own quantization backends.
AITK_BACKEND_QTYPES: tuple[str, ...] = (
    *(f"uint{bits}" for bits in range(2, 9)),
    "orbit2",
    "orbit3",
    "orbit4",
    "orbitvq2",
    "orbitvq3",
    "orbitvq4",
    "convrot4",
    "convrot8",
    "convrotbitnet",
    "convrotcomfyw4a4",
    *(f"convrotint{bits}" for bits in range(2, 9)),
    "nvfp4",
)

#: Transformer modules ai-toolkit keeps in full precision (fnmatch on module names).
TRANSFORMER_EXCLUDE: tuple[str, ...] = (
    "t_embedder*",
    "cap_embedder*",
    "all_x_embedder*",
    "all_final_layer*",
    "siglip_embedder*",
)

#: PEFT adapter modules, never quantized (the LoRA runs in full precision).
ADAPTER_EXCLUDE: tuple[str, ...] = (
    "*lora_A*",
    "*lora_B*",
    "*lora_embedding_A*",
    "*lora_embedding_B*",
    "*lora_magnitude_vector*",
)


def parse_qtype(qtype: str) -> tuple[str, str | None]:
    """Split ai-toolkit's ``qtype`` into ``(qtype, accuracy recovery adapter or None)``.

    ai-toolkit accepts ``"uint3|ostris/accuracy_recovery_adapters/file.safetensors"``:
    the part after ``|`` is an adapter loaded beside the quantized weights.

    Raises
    ------
    UnknownQtypeError
        Empty qtype or empty adapter part.
    """
    name, sep, adapter = qtype.strip().partition("|")
    name, adapter = name.strip(), adapter.strip()
    if not name or (sep and not adapter):
        raise UnknownQtypeError(f"malformed qtype {qtype!r}, expected NAME or NAME|ADAPTER")
    return name, (adapter or None)


def check_qtype(qtype: str) -> str:
    """Return the optimum-quanto qtype name for ai-toolkit's ``qtype``, or raise.

    Raises
    ------
    QuantizationUnavailableError
        torchao or ai-toolkit-backend qtypes, or an accuracy recovery adapter.
    UnknownQtypeError
        A name ai-toolkit does not know.
    """
    name, adapter = parse_qtype(qtype)
    if adapter is not None:
        raise QuantizationUnavailableError(
            f"qtype {qtype!r} uses the accuracy recovery adapter {adapter!r} "
            "(ai-toolkit's own quantization plus an adapter); parity cannot reproduce it"
        )
    if name in QUANTO_QTYPES:
        return name
    if name in TORCHAO_QTYPES:
        raise QuantizationUnavailableError(
            f"qtype {name!r} is quantized by torchao in ai-toolkit, which parity does not "
            "reproduce; previews of such jobs cannot be matched bit for bit"
        )
    if name in AITK_BACKEND_QTYPES:
        raise QuantizationUnavailableError(
            f"qtype {name!r} uses ai-toolkit's own quantization backend, which parity does "
            "not reproduce"
        )
    raise UnknownQtypeError(
        f"unknown qtype {name!r}; known: {', '.join(QUANTO_QTYPES + TORCHAO_QTYPES)}, "
        "uint2..uint8 and ai-toolkit's custom backends"
    )


def preview_qtypes(model_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The qtypes ai-toolkit actually sampled with, from the job's ``model`` section.

    Returns ``(transformer qtype or None, text encoder qtype or None)``. Applies
    ai-toolkit's defaults (``quantize`` False, ``quantize_te`` = ``quantize``, ``qtype``
    and ``qtype_te`` ``qfloat8``) and its substitutions: ``qfloat8`` becomes torchao
    ``float8`` for both with ``layer_offloading``, and for the transformer with an
    ``assistant_lora_path``. The result may still be unavailable here; see
    :func:`check_qtype`.
    """
    quantize = bool(model_config.get("quantize", False))
    quantize_te = bool(model_config.get("quantize_te", quantize))
    qtype = model_config.get("qtype") or "qfloat8"
    qtype_te = model_config.get("qtype_te") or "qfloat8"
    if model_config.get("layer_offloading"):
        qtype = "float8" if qtype == "qfloat8" else qtype
        qtype_te = "float8" if qtype_te == "qfloat8" else qtype_te
    if model_config.get("assistant_lora_path") and qtype == "qfloat8":
        qtype = "float8"
    return (str(qtype) if quantize else None, str(qtype_te) if quantize_te else None)


def _quantize_linears(module: torch.nn.Module, qtype: str, exclude: Iterable[str]) -> int:
    import torch
    from optimum.quanto import freeze, qtypes, quantize_module
    from optimum.quanto.nn import QModuleMixin

    patterns = tuple(exclude)
    weights = qtypes[check_qtype(qtype)]
    count = 0
    with torch.no_grad():
        for name, child in list(module.named_modules()):
            if not name or isinstance(child, QModuleMixin):
                continue
            if any(fnmatch(name, pattern) for pattern in patterns):
                continue
            qchild = quantize_module(child, weights=weights)
            if qchild is None:
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, qchild)
            count += 1
        freeze(module)
    module.requires_grad_(False)
    logger.info("quantized %d linear layers to %s", count, qtype)
    return count


def quantize_transformer(transformer: torch.nn.Module, qtype: str) -> int:
    """Quantize a Z-Image transformer's weights in place as ai-toolkit does, then freeze.

    Every module optimum-quanto can quantize (here the ``nn.Linear`` layers) is replaced
    by its quantized counterpart (``QLinear``) with ``qtype`` weights, except :data:`TRANSFORMER_EXCLUDE` and PEFT adapter layers
    (:data:`ADAPTER_EXCLUDE`); already quantized layers are left alone.

    Parameters
    ----------
    transformer:
        A ``ZImageTransformer2DModel``, with or without a PEFT LoRA attached.
    qtype:
        ai-toolkit's qtype name (``qfloat8``, ``qint8``, ``qint4``, ...).

    Returns
    -------
    int
        Number of layers quantized.

    Raises
    ------
    QuantizationUnavailableError, UnknownQtypeError
        See :func:`check_qtype`.
    """
    return _quantize_linears(transformer, qtype, TRANSFORMER_EXCLUDE + ADAPTER_EXCLUDE)


def quantize_text_encoder(text_encoder: torch.nn.Module, qtype: str) -> int:
    """Quantize every linear of the text encoder in place (ai-toolkit ``quantize_te``).

    Returns the number of layers quantized; raises as :func:`quantize_transformer`.
    """
    return _quantize_linears(text_encoder, qtype, ADAPTER_EXCLUDE)


def is_quantized(module: torch.nn.Module) -> bool:
    """True when any submodule of ``module`` is an optimum-quanto quantized module."""
    from optimum.quanto.nn import QModuleMixin

    return any(isinstance(m, QModuleMixin) for m in module.modules())
