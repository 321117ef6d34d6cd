"""Helpers shared by several test modules (pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from parity.cli import main
from parity.testing.jobs import TINY_BASE


def run_job_cli(
    job: Path | str,
    out: Path,
    capsys: Any,
    *extra: str,
    base_model: Path = TINY_BASE,
    attribution: bool = False,
) -> tuple[int, str, dict[tuple[int, int], dict]]:
    """``parity run JOB`` without history: (exit status, stderr, rows by (step, index))."""
    args = ["run", str(job), "--base-model", str(base_model), "--no-history", "--out", str(out)]
    if not attribution:
        args.append("--no-attribution")
    rc = main([*args, *extra])
    err = capsys.readouterr().err
    path = out / "results.json"
    rows = {}
    if path.exists():
        rows = {(r["step"], r["index"]): r for r in json.loads(path.read_text())}
    return rc, err, rows


def render_pipeline(pipe: Any, *, prompt: str, seed: int) -> np.ndarray:
    """A 64x64, 2-step, cfg 2 render of a diffusers ZImagePipeline, as uint8 RGB."""
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    image = pipe(
        prompt=prompt,
        negative_prompt="blurry",
        width=64,
        height=64,
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=generator,
    ).images[0]
    return np.asarray(image)


def corrected_index(run_dir: Path, step: int) -> dict:
    """``corrected_requests/<step>.json`` of a run folder."""
    return json.loads((run_dir / "corrected_requests" / f"{step}.json").read_text("utf-8"))


def request_for(run_dir: Path, step: int, index: int) -> tuple[dict, dict]:
    """The corrected request a preview is placed in, or for a preview no request
    reproduces the closest one its reasons name: (request, its prompt for the preview)."""
    corrected = corrected_index(run_dir, step)
    place = corrected["placement"].get(str(index))
    if place is None:  # the reasons name the same request as the index's "closest"
        place = corrected["closest"][str(index)]
        assert f"closest request: {place['file']} prompt {place['prompt']}" in " ".join(
            corrected["cannot_reproduce"][str(index)]
        )
    file, prompt = place["file"], place["prompt"]
    request = json.loads((run_dir / "corrected_requests" / file).read_text("utf-8"))
    return request, request["prompts"][prompt]


#: What a user sends for step 10 after reading the job's sample config: the sample-level
#: size, seed (walk_seed from 42), steps and guidance, each item's own values, and each
#: prompt verbatim, flags and all.
REQUEST = {
    "model": "zimage",
    "trigger_word": "sks",
    "loras": [{"path": "aitk_zimage/aitk_zimage_000000010.safetensors", "network_multiplier": 1}],
    "prompts": [
        {"prompt": "[trigger] a red cube on a table", "width": 64, "height": 64, "seed": 42,
         "sample_steps": 6, "guidance_scale": 4},
        {"prompt": "[trigger] a blue sphere", "width": 80, "height": 112, "seed": 43,
         "sample_steps": 6, "guidance_scale": 0},
        {"prompt": "[trigger] a green cone in a field", "width": 64, "height": 64, "seed": 44,
         "sample_steps": 6, "guidance_scale": 0},
        {"prompt": "[trigger] a wooden house --seed 7 --steps 4", "width": 64, "height": 64,
         "seed": 45, "sample_steps": 6, "guidance_scale": 0},
        {"prompt": "[trigger] a cat at night --n blurry --cfg 2.5", "width": 100, "height": 90,
         "seed": 46, "sample_steps": 6, "guidance_scale": 4},
    ],
}  # fmt: skip
