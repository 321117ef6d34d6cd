"""Weight quantization of the preview side, as ai-toolkit applies it.

ai-toolkit (``model.quantize``, ``model.qtype``, default ``qfloat8``) quantizes the
transformer's weights after loading it in the training dtype: every ``nn.Linear`` of the
transformer except the modules its family keeps in full precision
(:attr:`parity.family.Family.quantize_exclude`: Z-Image keeps its embedders and final
layer, FLUX.1 nothing), weights stored quantized, activations left in the compute dtype.
``model.quantize_te`` (default: ``quantize``) quantizes every linear of one text encoder
(:attr:`parity.family.Family.quantized_text_encoder`; the qtype is the family's rule, see
its ``preview_qtypes``). The LoRA network is never merged into a quantized base; it runs
beside it.

Two backends reproduce ai-toolkit's qtypes here, chosen by name as ai-toolkit chooses
(``toolkit/util/quantize.py get_qtype``):

- optimum-quanto (:data:`parity.aitk.QUANTO_QTYPES`, ``qfloat8`` first): each linear becomes a
  ``QLinear``, frozen.
- torchao (:data:`parity.aitk.TORCHAO_QTYPES`): ``float8`` is ``Float8WeightOnlyConfig`` and ``int8``
  ``Int8WeightOnlyConfig``, applied to each linear on its own; the module stays an
  ``nn.Linear`` whose weight is a quantized tensor. ai-toolkit switches ``qfloat8`` to
  ``float8`` when it merges a training adapter first (``assistant_lora_path``) and, for
  both models, with layer offloading (see :func:`parity.zimage.aitk.preview_qtypes`). torchao 0.10.0 runs
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
from collections.abc import Iterable
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from parity.aitk import TORCHAO_QTYPES, check_qtype

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: PEFT adapter modules, never quantized (the LoRA runs in full precision).
ADAPTER_EXCLUDE: tuple[str, ...] = (
    "*lora_A*",
    "*lora_B*",
    "*lora_embedding_A*",
    "*lora_embedding_B*",
    "*lora_magnitude_vector*",
)


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


def quantize_transformer(
    transformer: torch.nn.Module, qtype: str, exclude: Iterable[str] = ()
) -> int:
    """Quantize a transformer's linears in place as ai-toolkit does.

    Every ``nn.Linear`` except those matching ``exclude`` and PEFT adapter layers
    (:data:`ADAPTER_EXCLUDE`) gets ``qtype`` weights (see the module docstring for the
    backend); already quantized layers are left alone.

    Parameters
    ----------
    transformer:
        A ``ZImageTransformer2DModel``, ``FluxTransformer2DModel``...
    qtype:
        ai-toolkit's qtype name (``qfloat8``, ``float8``, ``qint8``, ``int8``, ...).
    exclude:
        fnmatch patterns of module names kept in full precision (the family's
        :attr:`parity.family.Family.quantize_exclude`).

    Returns
    -------
    int
        Number of layers quantized.

    Raises
    ------
    QuantizationUnavailableError, UnknownQtypeError
        See :func:`parity.aitk.check_qtype`.
    """
    return _quantize_linears(transformer, qtype, (*exclude, *ADAPTER_EXCLUDE))


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
