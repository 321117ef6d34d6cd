"""Build ai-toolkit job folders on the tiny models, laid out the way ai-toolkit lays them out.

``config.yaml`` is dumped with ``yaml.dump`` in ai-toolkit's job tree, LoRA checkpoints
carry ai-toolkit's metadata, and previews are named ``<ms>__<9-digit step>_<i>.jpg`` and
saved with Pillow's defaults (JPEG quality 75), as ai-toolkit saves them. The previews
themselves come from parity's preview renderer, optionally with one setting changed
(``preview_transform``) to inject a known difference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
TINY_BASE = FIXTURES / "models" / "tiny-zimage"
TINY_TURBO = FIXTURES / "models" / "tiny-zimage-turbo"
AITK_REAL_JOB = FIXTURES / "aitk_real" / "output" / "aitk_zimage"
AITK_REAL_BASE = FIXTURES / "aitk_real" / "tiny_zimage"
#: The real ai-toolkit FLUX.1 jobs (fp32, and the UI preset) and their tiny checkpoint.
AITK_FLUX_JOB = FIXTURES / "aitk_flux" / "output" / "aitk_flux"
AITK_FLUX_UI_JOB = FIXTURES / "aitk_flux_ui" / "output" / "aitk_flux_ui"
AITK_FLUX_BASE = FIXTURES / "aitk_flux" / "tiny_flux"

#: The causes of each preview of the real job (step -> sample index -> causes), derived by
#: hand from its config.yaml with ai-toolkit's and the server's rules, never from parity:
#: every setting the two sides differ in, which a run lists as a cause whether its
#: leave-one-out render confirms it or it falls below the case's noise floor.
#:  0: 64x64, cfg 4 -> ai-toolkit gives diffusers 3, the server 4.
#:  1: 80x112 -> the server floors to 64x96.
#:  2: per-item multiplier 0.5 vs the request's one LoRA at 1.0, once a LoRA exists
#:     (steps 10, 20; at step 0 there is no LoRA file to scale).
#:  3: --seed 7 --steps 4 flags copied into the request: nothing differs.
#:  4: 100x90 -> 96x88 -> 96x80 (floor 16) vs 96x64 (floor 32); --cfg 2.5 -> 1.5 vs 2.5.
#: Seeds agree everywhere: walk_seed from 42 gives 42, 43, 44, 7 (the flag), 46, and the
#: as-configured request writes those.
AITK_REAL_CAUSES: dict[int, dict[int, list[str]]] = {
    0: {0: ["cfg"], 1: ["snapping"], 2: [], 3: [], 4: ["cfg", "snapping"]},
    10: {0: ["cfg"], 1: ["snapping"], 2: ["lora_scale"], 3: [], 4: ["cfg", "snapping"]},
    20: {0: ["cfg"], 1: ["snapping"], 2: ["lora_scale"], 3: [], 4: ["cfg", "snapping"]},
}

_ENGINES: dict[tuple[str, str, str | None], Any] = {}


def shared_engine(base_model: str | Path, device: str = "cpu", family: str | None = None) -> Any:
    """One RenderEngine per base folder (and family, where two share a transformer class:
    Wan 2.1 and Wan 2.2) for the whole process (tests share them)."""
    from parity.render.engine import RenderEngine

    key = (str(Path(base_model).resolve()), device, family)
    if key not in _ENGINES:
        _ENGINES[key] = RenderEngine(key[0], device=device, family=family)
    return _ENGINES[key]


def job_config(
    *,
    name: str,
    sample: dict[str, Any],
    trigger_word: str | None = "sks",
    name_or_path: str = "Tongyi-MAI/Z-Image",
    arch: str = "zimage",
    train_dtype: str = "fp32",
    model_extra: dict[str, Any] | None = None,
    rank: int = 4,
    save_dtype: str = "float32",
    process_type: str = "sd_trainer",
    network_extra: dict[str, Any] | None = None,
    train_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job tree ai-toolkit saves as config.yaml.

    The defaults are a plain fp32 job; :data:`UI_PRESET` holds the keyword arguments of the
    configuration ai-toolkit's UI writes for Z-Image.
    """
    process: dict[str, Any] = {
        "type": process_type,
        "training_folder": "output",
        "device": "cpu",
        "network": {"type": "lora", "linear": rank, "linear_alpha": rank, **(network_extra or {})},
        "save": {"dtype": save_dtype, "save_every": 10, "max_step_saves_to_keep": 4},
        "datasets": [{"folder_path": "dataset", "caption_ext": "txt", "resolution": [64]}],
        "train": {
            "batch_size": 1,
            "steps": 20,
            "lr": 1e-4,
            "dtype": train_dtype,
            "optimizer": "adamw",
            **(train_extra or {}),
        },
        "model": {
            "name_or_path": name_or_path,
            "arch": arch,
            "quantize": False,
            **(model_extra or {}),
        },
        "sample": sample,
    }
    if trigger_word is not None:
        process = {"trigger_word": trigger_word, **process}
    return {
        "job": "extension",
        "config": {"name": name, "process": [process]},
        "meta": {"name": name, "version": "1.0"},
    }


#: Keyword arguments of :func:`job_config` (and :func:`write_job`) for the configuration
#: ai-toolkit's UI writes for a Z-Image job (ui/src/app/jobs/new/options.tsx, jobConfig.ts):
#: the diffusion trainer, bf16 training and saving, qfloat8 transformer and text encoder,
#: low VRAM. Add ``arch``/``name_or_path``/``model_extra`` for Turbo with its adapter.
UI_PRESET: dict[str, Any] = {
    "process_type": "diffusion_trainer",
    "train_dtype": "bf16",
    "save_dtype": "bf16",
    "model_extra": {"quantize": True, "qtype": "qfloat8", "quantize_te": True, "low_vram": True},
    "train_extra": {
        "ema_config": {"use_ema": False, "ema_decay": 0.99},
        "skip_first_sample": False,
        "disable_sampling": False,
        "cache_text_embeddings": False,
        "unload_text_encoder": False,
    },
}


def write_job(
    root: str | Path,
    *,
    name: str = "tiny_job",
    sample: dict[str, Any],
    checkpoints: dict[int, dict[str, Any]] | None = None,
    preview_steps: tuple[int, ...] | None = None,
    base_model: str | Path = TINY_BASE,
    aitk_version: str = "0.12.26",
    preview_transform: Callable[[Any, Any], Any] | None = None,
    render: bool = True,
    lossless: bool = False,
    **config_kwargs: Any,
) -> Path:
    """Write a job folder ``root/name`` and render its previews; return the folder.

    Parameters
    ----------
    checkpoints:
        step → keyword arguments of :func:`parity.testing.lora.write_aitk_lora` (the
        LoRA of that step; the largest step is also written as the final
        ``<name>.safetensors``). Default: one checkpoint at step 10.
    preview_steps:
        Steps that get previews (default: every checkpoint step).
    preview_transform:
        ``f(settings, sample) -> settings`` applied before rendering each preview, to
        inject a known difference.
    lossless:
        Also keep each preview's pixels as ``lossless_previews/<name>.png``.
    """
    import torch

    from parity.testing.lora import write_aitk_lora

    folder = Path(root) / name
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    config = job_config(name=name, sample=copy.deepcopy(sample), **config_kwargs)
    (folder / "config.yaml").write_text(yaml.dump(config), encoding="utf-8")
    checkpoints = {10: {}} if checkpoints is None else checkpoints

    def write_checkpoints(dtype: Any) -> None:
        files = {step: folder / f"{name}_{step:09d}.safetensors" for step in checkpoints}
        if checkpoints:
            files[None] = folder / f"{name}.safetensors"  # the final file: the last step
        for step, path in files.items():
            step = max(checkpoints) if step is None else step
            kwargs = {"step": step, "name": name, "aitk_version": aitk_version, "dtype": dtype}
            write_aitk_lora(path, base_model, **{**kwargs, **checkpoints[step]})

    # Previews come from the float32 training weights; ai-toolkit saves them in save.dtype.
    write_checkpoints(torch.float32)
    if render:
        render_previews(
            folder,
            base_model=base_model,
            steps=preview_steps,
            transform=preview_transform,
            lossless=lossless,
        )
    save_dtype = config["config"]["process"][0]["save"]["dtype"]
    if save_dtype in ("bf16", "bfloat16", "fp16", "float16"):
        write_checkpoints(torch.bfloat16 if save_dtype.startswith("bf") else torch.float16)
    return folder


def render_previews(
    folder: Path,
    *,
    base_model: str | Path | None = None,
    engine: Any = None,
    steps: tuple[int, ...] | None = None,
    transform: Callable[[Any, Any], Any] | None = None,
    lossless: bool = False,
) -> list[Path]:
    """Render and save every sample of ``steps`` as ai-toolkit previews.

    The render comes from ``engine`` (any checkpoint, split ones included) or else the
    shared engine of ``base_model``. With ``lossless``, each preview's pixels are also
    kept as ``lossless_previews/<preview name>.png`` (what ai-toolkit's pipeline returned
    before the JPEG save), so that renders made on another machine can be checked within
    float noise before encoding.
    """
    from parity.job import read_job
    from parity.plan.sides import preview_settings
    from parity.results import save_png

    job = read_job(folder)
    if steps is None:
        steps = tuple(c.step for c in job.checkpoints) or (0,)
    if engine is None:
        engine = shared_engine(base_model or TINY_BASE)
    written = []
    ms = 1_700_000_000_000
    for step in steps:
        checkpoint = job.checkpoint_for_step(step)
        for sample in job.samples:
            settings = preview_settings(job, sample, checkpoint)
            if transform is not None:
                settings = transform(settings, sample)
            image = engine.render(settings).image
            ms += 397
            path = folder / "samples" / f"{ms}__{step:09d}_{sample.index}.jpg"
            image.save(path)  # Pillow's defaults, as ai-toolkit saves previews
            if lossless:
                save_png(image, folder / "lossless_previews" / f"{path.stem}.png")
            written.append(path)
    return written
