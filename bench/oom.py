"""The engine's out-of-memory fallback, exercised for real on CUDA
(``python -m bench --full-size --oom-fallback``, first model)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import _drop_engine_adapter, _fresh_engine, _reference_settings

#: Memory left above what the built pipeline holds when the OOM fallback is exercised:
#: the weights fit, a render's activations do not.
OOM_HEADROOM_BYTES = 32 * 2**20


def oom_fallback(pipe: Any, job_dir: Path, device: str, dtype_name: str) -> dict[str, Any]:
    """Exercise the engine's out-of-memory fallback for real.

    The CUDA caching allocator is capped (``torch.cuda.set_per_process_memory_fraction``)
    just above the memory the pipeline's weights already hold, so the first attempt of a
    render runs out of memory inside the pipeline; the engine then turns model CPU offload
    on and renders again, which fits (one model on the GPU at a time). The cap is lifted
    afterwards. Needs CUDA; on CPU it says so and returns.
    """
    if not device.startswith("cuda"):
        print("OOM fallback: skipped (it caps CUDA memory; this run is on CPU)")
        return {"skipped": "needs CUDA"}
    import torch

    from parity.errors import RenderError

    engine = _fresh_engine(pipe, device, dtype_name)
    settings = _reference_settings(job_dir, engine, device)
    # Prompt embeddings and the LoRA adapter are made before the cap, so that the first
    # allocation beyond it happens inside the pipeline, where the fallback catches it.
    variant = engine.variant(settings.dtype)
    engine.encode(settings.prompt, variant)
    engine.encode(settings.negative_prompt, variant)
    engine._use_peft(variant, settings.lora)
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    torch.cuda.synchronize(index)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(index).total_memory
    held = torch.cuda.memory_reserved(index)
    cap = held + OOM_HEADROOM_BYTES
    torch.cuda.reset_peak_memory_stats(index)
    torch.cuda.set_per_process_memory_fraction(cap / total, index)
    started = time.perf_counter()
    result: dict[str, Any] = {"held_mib": held / 2**20, "cap_mib": cap / 2**20}
    try:
        out = engine.render(settings)
        result.update(rendered=True, image_size=list(out.image.size))
    except (RenderError, torch.OutOfMemoryError) as e:
        result.update(rendered=False, error=f"{type(e).__name__}: {e}")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        _drop_engine_adapter(pipe)
    result.update(
        seconds=time.perf_counter() - started,
        offloaded=bool(engine._offloaded),
        peak_mib=torch.cuda.max_memory_allocated(index) / 2**20,
    )
    cap_text = f"cap {result['cap_mib']:.0f} MiB (weights {result['held_mib']:.0f} MiB)"
    if not result.get("rendered"):
        what = f"the render FAILED: {result.get('error')}"
    elif result["offloaded"]:
        what = "the first attempt ran out of memory; rendered again with model CPU offload"
    else:
        what = "the render fitted under the cap: the fallback was NOT exercised"
    print(
        f"OOM fallback: {cap_text}: {what} in {result['seconds']:.1f} s, "
        f"peak {result['peak_mib']:.0f} MiB"
    )
    return result
