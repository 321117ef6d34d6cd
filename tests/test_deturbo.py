"""De-Turbo: a split checkpoint (transformer from one id, the rest from another), both
sides resolved through the model map.

``fixtures/jobs/deturbo`` is an ``arch: zimage:deturbo`` job with
``name_or_path: ostris/Z-Image-De-Turbo`` and ``extras_name_or_path:
Tongyi-MAI/Z-Image-Turbo``. Here the De-Turbo id maps to a transformer-only folder built
in tmp from the tiny base model's transformer (weights other than Turbo's), and the Turbo
id to ``fixtures/models/tiny-zimage-turbo``; the committed previews were rendered from
that pair.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity.cli import main
from parity.model_map import ModelMap
from parity.render.models import resolve_job_model, resolve_reference_model
from parity.testing.jobs import FIXTURES, TINY_BASE, TINY_TURBO
from parity.zimage.checkpoints import ZIMAGE_DETURBO_HUB_ID, ZIMAGE_TURBO_HUB_ID

JOB = FIXTURES / "jobs" / "deturbo"
EXPECTED_CAUSES = {0: ["cfg"], 1: ["steps"]}


@pytest.fixture(scope="module")
def deturbo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "deturbo"
    folder.mkdir()
    shutil.copytree(TINY_BASE / "transformer", folder / "transformer")
    return folder


@pytest.fixture(scope="module")
def map_flags(deturbo_folder: Path) -> list[str]:
    return [
        "--model-map",
        f"{ZIMAGE_DETURBO_HUB_ID}={deturbo_folder}",
        "--model-map",
        f"{ZIMAGE_TURBO_HUB_ID}={TINY_TURBO}",
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, map_flags: list[str]) -> Path:
    out = tmp_path_factory.mktemp("deturbo-run") / "run"
    code = main(["run", str(JOB), *map_flags, "--out", str(out), "--no-history"])
    assert code == 1
    return out


@pytest.fixture(scope="module")
def rows(run_dir: Path) -> dict[int, dict]:
    data = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return {row["index"]: row for row in data}


def test_job_and_reference_resolve_to_the_same_split_checkpoint(deturbo_folder: Path) -> None:
    from parity.job import read_job

    job = read_job(JOB)
    assert job.reference_model == "zimage_deturbo"
    model_map = ModelMap.load(
        [f"{ZIMAGE_DETURBO_HUB_ID}={deturbo_folder}", f"{ZIMAGE_TURBO_HUB_ID}={TINY_TURBO}"],
        env=None,
        pyproject=None,
    )
    preview_side = resolve_job_model(job.name_or_path, job.extras_name_or_path, model_map)
    reference_side = resolve_reference_model(job.reference_model, model_map)
    assert preview_side.is_split
    assert Path(preview_side.transformer) == deturbo_folder.resolve()
    assert Path(preview_side.components) == TINY_TURBO.resolve()
    # parity run renders both sides with one engine: it must be the reference's model too.
    assert (preview_side.transformer, preview_side.components) == (
        reference_side.transformer,
        reference_side.components,
    )


@pytest.mark.parametrize("index", sorted(EXPECTED_CAUSES))
def test_run_names_deturbo_causes_and_explains_them(rows: dict[int, dict], index: int) -> None:
    row = rows[index]
    assert row["verdict"] == "mismatch"
    assert row["candidate_causes"] == EXPECTED_CAUSES[index]
    assert row["causes"] == EXPECTED_CAUSES[index]
    assert row["explained"] is True
    reference = next(cf for cf in row["counterfactuals"] if cf["cause"] != "all")["settings"]
    preview = next(cf for cf in row["counterfactuals"] if cf["cause"] == "all")["settings"]
    # De-Turbo's server replaces the scheduler with shift 3.0, as ai-toolkit samples.
    assert reference["scheduler_shift"] == preview["scheduler_shift"] == 3.0
    if index == 0:  # guidance_scale 3 written: ai-toolkit passes 2, the server 3
        assert (preview["pipeline_guidance"], reference["pipeline_guidance"]) == (2.0, 3.0)
    else:  # no sample_steps written: ai-toolkit's 20, the server's De-Turbo default 25
        assert (preview["steps"], reference["steps"]) == (20, 25)


def _hand_assembled_render(transformer_folder: Path, prompt: str) -> np.ndarray:
    """The server's render of sample 0 from a ZImagePipeline put together by hand."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    pipe = ZImagePipeline(
        transformer=ZImageTransformer2DModel.from_pretrained(
            transformer_folder, subfolder="transformer"
        ),
        vae=AutoencoderKL.from_pretrained(TINY_TURBO, subfolder="vae"),
        text_encoder=Qwen3ForCausalLM.from_pretrained(TINY_TURBO, subfolder="text_encoder"),
        tokenizer=AutoTokenizer.from_pretrained(TINY_TURBO, subfolder="tokenizer"),
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    lora = JOB / "deturbo_000000010.safetensors"
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="lora")
    with torch.no_grad():
        image = pipe(
            prompt=prompt,
            negative_prompt="",
            width=64,
            height=64,
            num_inference_steps=4,
            guidance_scale=3.0,
            generator=torch.Generator("cpu").manual_seed(3),
        ).images[0]
    return np.asarray(image.convert("RGB"))


def test_reference_render_uses_the_split_checkpoint(
    run_dir: Path, rows: dict[int, dict], deturbo_folder: Path
) -> None:
    row = rows[0]
    rendered = np.asarray(Image.open(run_dir / row["render"]).convert("RGB"))
    split = _hand_assembled_render(deturbo_folder, row["prompt"])
    turbo = _hand_assembled_render(TINY_TURBO, row["prompt"])
    assert np.array_equal(rendered, split)
    assert np.abs(rendered.astype(np.int16) - turbo).max() > 10


def test_preview_side_loads_the_deturbo_transformer(
    tmp_path: Path, map_flags: list[str], float_noise
) -> None:
    """``parity preview`` through the map reproduces the committed previews, which were
    rendered on another machine, within float noise."""
    out = tmp_path / "previews"
    assert main(["preview", str(JOB), *map_flags, "--out", str(out)]) == 0
    assert float_noise.check_job_previews(JOB, out) == 2
