"""Weight quantization of the preview side, as ai-toolkit applies it.

ai-toolkit (``model.quantize``, ``model.qtype``, default ``qfloat8``) quantizes the
Z-Image transformer's weights after loading it in the training dtype: every
``nn.Linear`` of the transformer except those under ``t_embedder``, ``cap_embedder``,
``all_x_embedder``, ``all_final_layer`` and ``siglip_embedder``
(:data:`TRANSFORMER_EXCLUDE`: 31 of the 37 linears of a 2-layer transformer), weights
stored quantized, activations left in the compute dtype. ``model.quantize_te``
(default: ``quantize``) quantizes every linear of the text encoder with
``model.qtype_te`` (default ``qfloat8``). The LoRA network is never merged into a
quantized base; it runs beside it.

Two backends reproduce ai-toolkit's qtypes here, chosen by name as ai-toolkit chooses
(``toolkit/util/quantize.py get_qtype``):

- optimum-quanto (:data:`QUANTO_QTYPES`, ``qfloat8`` first): each linear becomes a
  ``QLinear``, frozen.
- torchao (:data:`TORCHAO_QTYPES`): ``float8`` is ``Float8WeightOnlyConfig`` and ``int8``
  ``Int8WeightOnlyConfig``, applied to each linear on its own; the module stays an
  ``nn.Linear`` whose weight is a quantized tensor. ai-toolkit switches ``qfloat8`` to
  ``float8`` when it merges a training adapter first (``assistant_lora_path``) and, for
  both models, with layer offloading (see :func:`preview_qtypes`). torchao 0.10.0 runs
  both on CPU with torch 2.13.

ai-toolkit's own backends (``uint2`` ... ``uint8``, ``orbit*``, ``orbitvq*``, ``convrot*``,
``nvfp4``) and the accuracy recovery adapter form ``qtype|adapter`` are not reproduced
and raise :class:`QuantizationUnavailableError`: they are ai-toolkit's code (its UIntX
quantizer and custom kernels), not a library parity can call, and writing them again
would be a copy of ai-toolkit.

Quantization uses the weights in the dtype the module has when it is called; ai-toolkit
quantizes in the training dtype (``train.dtype``, usually bf16), so cast first. Do not
fuse a LoRA into a quantized transformer: ai-toolkit never does (``can_merge_in`` is
False when quantizing).
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
    """Return ai-toolkit's ``qtype`` when parity reproduces it, or raise.

    Raises
    ------
    QuantizationUnavailableError
        ai-toolkit-backend qtypes, or an accuracy recovery adapter.
    UnknownQtypeError
        A name ai-toolkit does not know.
    """
    name, adapter = parse_qtype(qtype)
    if adapter is not None:
        raise QuantizationUnavailableError(
            f"qtype {qtype!r} uses the accuracy recovery adapter {adapter!r} "
            "(ai-toolkit's own quantization plus an adapter); parity cannot reproduce it"
        )
    if name in QUANTO_QTYPES or name in TORCHAO_QTYPES:
        return name
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

    patterns = tuple(exclude)
    name = check_qtype(qtype)
    targets = [
        (child_name, child)
        for child_name, child in module.named_modules()
        if child_name
        and isinstance(child, torch.nn.Linear)
        and not any(fnmatch(child_name, pattern) for pattern in patterns)
    ]
    with torch.no_grad():
        if name in TORCHAO_QTYPES:
            count = _torchao(targets, name)
        else:
            count = _quanto(module, targets, name)
    module.requires_grad_(False)
    logger.info("quantized %d linear layers to %s", count, qtype)
    return count


def _quanto(module: torch.nn.Module, targets: list[tuple[str, Any]], qtype: str) -> int:
    from optimum.quanto import freeze, qtypes, quantize_module
    from optimum.quanto.nn import QModuleMixin

    count = 0
    for name, child in targets:
        if isinstance(child, QModuleMixin):
            continue
        qchild = quantize_module(child, weights=qtypes[qtype])
        if qchild is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, qchild)
        count += 1
    freeze(module)
    return count


def _torchao(targets: list[tuple[str, Any]], qtype: str) -> int:
    import warnings

    with warnings.catch_warnings():  # "no triton": irrelevant to the CPU and eager paths
        warnings.simplefilter("ignore")
        logging.getLogger("torchao").setLevel(logging.ERROR)
        from torchao.quantization import (
            Float8WeightOnlyConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

    config = Float8WeightOnlyConfig() if qtype == "float8" else Int8WeightOnlyConfig()
    count = 0
    for _, child in targets:
        if "torchao" in type(child.weight).__module__:
            continue  # already quantized
        quantize_(child, config)
        count += 1
    return count


def quantize_transformer(transformer: torch.nn.Module, qtype: str) -> int:
    """Quantize a Z-Image transformer's linears in place as ai-toolkit does.

    Every ``nn.Linear`` except :data:`TRANSFORMER_EXCLUDE` and PEFT adapter layers
    (:data:`ADAPTER_EXCLUDE`) gets ``qtype`` weights (see the module docstring for the
    backend); already quantized layers are left alone.

    Parameters
    ----------
    transformer:
        A ``ZImageTransformer2DModel``.
    qtype:
        ai-toolkit's qtype name (``qfloat8``, ``float8``, ``qint8``, ``int8``, ...).

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
    """True when any linear of ``module`` holds quantized weights (quanto or torchao)."""
    from optimum.quanto.nn import QModuleMixin

    return any(
        isinstance(m, QModuleMixin) or "torchao" in type(getattr(m, "weight", None)).__module__
        for m in module.modules()
    )
