"""Loading a family's diffusers pipeline from one checkpoint or from split ones: the part
every family's pipeline adapter (``parity/<family>/pipeline.py``) that loads with
``from_pretrained`` shares.

A split checkpoint is what ai-toolkit reads for a transformer-only ``name_or_path`` and
what some server models load (``wan22_14b_t2v``: both experts from one repository, the
rest from another); see :class:`parity.render.models.ModelSource`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def load_from_parts(
    pipeline_class: Any,
    transformer_class: Any,
    scheduler_class: Any,
    transformer_ref: str,
    components: str,
    scheduler_ref: str | None,
    *,
    dtype: Any,
    device: Any,
    experts: Sequence[str] = ("transformer",),
) -> Any:
    """``pipeline_class.from_pretrained(components)`` on ``device``, progress bar off.

    A split checkpoint (``transformer_ref`` other than ``components``) gives each of
    ``experts`` (the pipeline's denoisers, ``transformer`` and for a two-expert model
    ``transformer_2``) from its subfolder of ``transformer_ref``; the scheduler comes from
    ``scheduler_ref`` when it is another folder (renders replace it with the one their
    settings describe anyway). Every part is loaded in ``dtype``.
    """
    parts: dict[str, Any] = {}
    if transformer_ref != components:
        for expert in experts:
            parts[expert] = transformer_class.from_pretrained(
                transformer_ref, subfolder=expert, dtype=dtype
            )
    if scheduler_ref is not None and scheduler_ref != components:
        parts["scheduler"] = scheduler_class.from_pretrained(scheduler_ref, subfolder="scheduler")
    pipe = pipeline_class.from_pretrained(components, dtype=dtype, **parts)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
