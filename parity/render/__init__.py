"""Stage 3, render: the base model loaded once, any RenderSettings rendered with it.

:mod:`parity.render.models` (where weights come from and how a pipeline is loaded),
:mod:`parity.render.lora` (LoRA arithmetic), :mod:`parity.render.quantize` (the
preview side's quantization) and :mod:`parity.render.engine` (the render engine).
"""
