"""The Wan 2.1 text-to-video family end to end, on a real ai-toolkit Wan 2.1 job and the
reference server's own renders of its prompts.

Ground truth that parity did not produce (``fixtures/aitk_wan21``; its README says how
each file was made):

- 9-frame animated WebP previews rendered by ai-toolkit's own trainer, every frame also
  kept lossless (``lossless_previews/<preview>/<frame>.png``), with the call log of every
  ``WanPipeline`` call (``calls.jsonl``: size, frames, steps, guidance, seed, the
  scheduler's class, config and sigmas, the LoRA's multiplier, how the WebP was written);
- the same prompts rendered by the server's ``wan21_1b`` class (``server/<step>/``: the
  request, every frame returned and the WebP its executor wrote).

The expected causes are derived by hand from the two sides' rules
(``docs/families/wan.md``), never from parity's output: ai-toolkit samples with its
FlowMatch Euler training scheduler (shift 3), the server with the checkpoint's UniPC, so
every preview differs by ``scheduler``; item 2 runs at multiplier 0.5 where the server's
request (one scale) runs 1.0, once a LoRA exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import corrected_index

from parity.cli import main
from parity.compare import frame_ms, inspect_codec, load_clip, load_rgb
from parity.job import read_job
from parity.plan.sides import as_configured_request, pair_for
from parity.testing.jobs import FIXTURES

WAN = FIXTURES / "aitk_wan21"
JOB = WAN / "output" / "aitk_wan21"
BASE = WAN / "tiny_wan21"
HUB_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

CAUSES: dict[tuple[int, int], list[str]] = {
    (step, i): ["scheduler"] for step in (0, 10, 20) for i in range(6)
}
CAUSES[(10, 2)] = CAUSES[(20, 2)] = ["scheduler", "lora_scale"]


def _calls(fixture: Path = WAN) -> dict[str, dict]:
    """ai-toolkit's WanPipeline calls of a fixture by preview file name."""
    lines = (fixture / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    calls = [json.loads(line) for line in lines]
    return {Path(c["preview"]).name: c for c in calls}


def _frames(folder: Path) -> list[np.ndarray]:
    """The lossless frames ``<folder>/<n>.png`` in play order."""
    paths = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    return [load_rgb(p) for p in paths]


def _preview(step: int, index: int) -> Path:
    (path,) = (JOB / "samples").glob(f"*__{step:09d}_{index}.webp")
    return path


def _rows(results: Path) -> dict[tuple[int, int], dict]:
    rows = json.loads(results.read_text(encoding="utf-8"))
    return {(r["step"], r["index"]): r for r in rows}


# ------------------------------------------------------------------------- the job


def test_the_family_and_its_server_model_come_from_the_config():
    job = read_job(JOB)
    assert (job.family, job.arch, job.reference_model) == ("wan21", "wan21", "wan21_1b")
    assert job.merged_lora is False  # one item has its own multiplier
    assert [len(c.paths) for c in job.checkpoints] == [1, 1]
    assert [(s.num_frames, s.fps) for s in job.samples] == [
        (9, 16), (1, 16), (9, 16), (9, 16), (9, 16), (9, 8)
    ]  # fmt: skip


def test_preview_settings_are_what_ai_toolkit_gave_wan_pipeline():
    """Each preview's settings against the call log of the pipeline call that made it."""
    job = read_job(JOB)
    calls = _calls()
    assert len(calls) == len(job.previews) == 18
    for preview in job.previews:
        call = calls[preview.path.name]
        checkpoint = job.checkpoint_for_step(preview.step)
        request = as_configured_request(job, checkpoint)
        pair = pair_for(job, job.samples[preview.index], checkpoint, request=request,
                        request_index=preview.index)  # fmt: skip
        p = pair.preview
        assert [p.width, p.height] == [call["width"], call["height"]], preview.path.name
        assert (p.num_frames, p.steps) == (call["num_frames"], call["num_inference_steps"])
        assert p.seed == call["generator"]["initial_seed"]
        assert p.pipeline_guidance == call["guidance_scale"]  # unchanged
        assert p.fps == call["preview_encoding"]["fps"]
        scheduler = call["scheduler"]
        assert scheduler["class"].endswith("FlowMatchEulerDiscreteScheduler")
        assert p.scheduler_class == "FlowMatchEulerDiscreteScheduler"
        assert p.scheduler_shift == scheduler["config"]["shift"] == 3.0
        assert p.dynamic_shift is None and not scheduler["config"]["use_dynamic_shifting"]
        network = call["lora"]["transformer"]["networks"]
        if checkpoint is not None:
            assert p.lora is not None and p.lora.scale == network[0]["multiplier"]
            assert p.lora.merged is network[0]["is_merged_in"] is False
        r = pair.reference
        assert r.scheduler_class == "UniPCMultistepScheduler" and r.scheduler_shift is None
        assert dict(r.scheduler_options)["flow_shift"] == 3.0
        assert sorted(pair.differences) == sorted(CAUSES[(preview.step, preview.index)])


def test_a_frame_count_the_pipeline_rounds_is_rendered_as_it_rounds():
    """WanPipeline renders 4k + 1 frames: another count becomes ``n // 4 * 4 + 1`` on both
    sides (the fixture README measured 10 -> 9 and 8 -> 9)."""
    from parity.families import family

    frames = family("wan21").pipeline_frames
    assert frames is not None
    assert [frames(n) for n in (1, 8, 9, 10, 41)] == [1, 9, 9, 9, 41]


def test_low_vram_previews_keep_a_count_wan_pipeline_would_round(tmp_path: Path):
    """Under ``low_vram`` ai-toolkit's own pipeline draws ``(n - 1) // 4 + 1`` latent
    frames and does not round ``n``: the tiny VAE decodes 10 latent frames (n = 40) to 37
    frames, where the server's ``WanPipeline`` renders 41, a ``frames`` cause."""
    import shutil

    import torch
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(BASE / "vae")
    latents = torch.zeros(1, vae.config.z_dim, (40 - 1) // 4 + 1, 8, 8)
    with torch.no_grad():
        decoded = vae.decode(latents).sample
    ui_job = FIXTURES / "aitk_wan21_ui" / "output" / "aitk_wan21_ui"
    job_dir = Path(shutil.copytree(ui_job, tmp_path / "job"))
    config = (job_dir / "config.yaml").read_text(encoding="utf-8")
    (job_dir / "config.yaml").write_text(config.replace("num_frames: 41", "num_frames: 40"))
    job = read_job(job_dir)
    checkpoint = job.checkpoint_for_step(10)
    request = as_configured_request(job, checkpoint)
    pair = pair_for(job, job.samples[0], checkpoint, request=request, request_index=0)
    assert pair.preview.num_frames == decoded.shape[2] == 37
    assert pair.reference.num_frames == 41 and "frames" in pair.differences


# ------------------------------------------------------------------ previews, server


def test_preview_reproduces_every_stored_preview_frame_by_frame(tmp_path: Path, float_noise):
    out = tmp_path / "previews"
    args = ["preview", str(JOB), "--base-model", str(BASE), "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 18
    for entry in effective:
        assert entry["settings"]["family"] == "wan21"
        stored = _preview(entry["step"], entry["index"])
        render = load_clip(out / entry["image"])
        lossless = _frames(WAN / "lossless_previews" / stored.stem)
        assert len(render) == len(lossless) == (1 if entry["index"] == 1 else 9)
        float_noise.check(f"{stored.name} before WebP", lossless, list(render.frames))
        float_noise.check(
            stored.name,
            list(load_clip(stored).frames),
            list(render.frames),
            codec=inspect_codec(stored),
            frame_duration=frame_ms(entry["settings"]["fps"]) if len(render) > 1 else None,
        )


@pytest.mark.parametrize("step", [10, 20])
def test_server_renders_are_reproduced(step: int, tmp_path: Path, float_noise):
    """The server's own ``wan21_1b`` rendered ``server/<step>/request.json``: ``parity
    render`` of the same file gives the same frames, and written as the server writes
    them, the same WebP pixels."""
    folder = WAN / "server" / str(step)
    out = tmp_path / "render"
    args = ["render", str(folder / "request.json"), "--lora-root", str(WAN / "output")]
    assert main([*args, "--base-model", str(BASE), "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert len(effective) == 6
    for i, entry in enumerate(effective):
        assert entry["settings"]["scheduler_class"] == "UniPCMultistepScheduler"
        render = list(load_clip(out / entry["image"]).frames)
        float_noise.check(f"server {step}/{i}", _frames(folder / str(i)), render)
        served = folder / f"{i}.webp"
        float_noise.check(
            f"server {step}/{i}.webp",
            list(load_clip(served).frames),
            render,
            codec=inspect_codec(served),
            frame_duration=load_clip(served).frame_ms,
        )


def test_the_server_default_of_41_frames_at_16_fps(tmp_path: Path):
    """A prompt without ``num_frames`` and ``fps``: the server's defaults, which parity
    plans (the server rendered ``server/defaults/``)."""
    from parity.server import load_request, server_prompts

    request = load_request(WAN / "server" / "defaults" / "request.json")
    prompt = server_prompts(request)[0]
    assert (prompt.num_frames, prompt.fps) == (41, 16)
    (served,) = (WAN / "server" / "defaults").glob("*.webp")
    clip = load_clip(served)
    assert (len(clip), clip.frame_ms) == (41, frame_ms(16))


# ------------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def wan_run(tmp_path_factory) -> tuple[Path, dict, int]:
    """``parity run`` with the Wan 2.1 hub id mapped to the tiny checkpoint."""
    out = tmp_path_factory.mktemp("wan-run") / "run"
    args = ["run", str(JOB), "--model-map", f"{HUB_ID}={BASE}", "--device", "cpu"]
    code = main([*args, "--out", str(out), "--no-history"])
    return out, _rows(out / "results.json"), code


def test_every_preview_gets_the_causes_the_two_sides_imply(wan_run):
    """``scheduler`` everywhere, confirmed by its counterfactual (the reference rendered
    with the preview's scheduler); with every cause switched each preview is reproduced
    frame by frame, so no other cause hides."""
    out, rows, code = wan_run
    assert code == 1
    assert set(rows) == set(CAUSES)
    for key, row in rows.items():
        expected = sorted(CAUSES[key])
        assert row["verdict"] == "mismatch", key
        assert row["causes"] == expected and row["explained"] is True, (key, row["detail"])
        confirmed = sorted(c["cause"] for c in row["counterfactuals"] if c["confirmed"])
        assert confirmed == expected, key
        # With every cause switched the render is the preview (here bit-exact; on other
        # CPU kernels within the float noise the WebP codec spreads).
        everything = next(c for c in row["counterfactuals"] if c["cause"] == "all")
        assert everything["match"], key
        video = row["video"]
        frames = 1 if key[1] == 1 else 9
        assert (video["frames_preview"], video["frames_render"]) == (frames, frames)
        assert len(video["frames"]) == frames
        worst = video["frames"][video["worst_frame"]]
        assert worst["ssim"] == row["ssim"] == min(f["ssim"] for f in video["frames"])
        assert video["frame_ms_preview"] == video["frame_ms_render"]
    csv_header = (out / "results.csv").read_text(encoding="utf-8").splitlines()[0]
    assert csv_header.endswith(",worst_frame")


def test_corrected_requests_say_no_request_chooses_the_scheduler(wan_run):
    """Every preview is in ``cannot_reproduce`` with the scheduler as the reason, and its
    closest request sets everything a request can to what ai-toolkit's pipeline received
    (the call log): size, frames, fps, seed, steps, guidance and the LoRA scale."""
    out, rows, _ = wan_run
    calls = _calls()
    for step in (10, 20):
        index = corrected_index(out, step)
        assert index["placement"] == {}
        for i in range(6):
            reasons = index["cannot_reproduce"][str(i)]
            assert "UniPCMultistepScheduler" in reasons[0] and "cannot change it" in reasons[0]
            place = index["closest"][str(i)]
            request = json.loads((out / "corrected_requests" / place["file"]).read_text())
            prompt = request["prompts"][place["prompt"]]
            call = calls[_preview(step, i).name]
            assert (prompt["width"], prompt["height"]) == (call["width"], call["height"])
            assert prompt["num_frames"] == call["num_frames"]
            assert prompt["fps"] == call["preview_encoding"]["fps"]
            assert (prompt["seed"], prompt["sample_steps"]) == (
                call["generator"]["initial_seed"], call["num_inference_steps"]
            )  # fmt: skip
            assert prompt["guidance_scale"] == call["guidance_scale"]
            multiplier = call["lora"]["transformer"]["networks"][0]["multiplier"]
            assert request["loras"][0]["network_multiplier"] == multiplier


def test_explain_shows_both_sigma_schedules(capsys, tmp_path: Path):
    """The preview's Euler sigmas and the server's UniPC sigmas, as the call logs list
    them (6 steps)."""
    common = ["--base-model", str(BASE), "--device", "cpu", "--out", str(tmp_path)]
    assert main(["explain", str(JOB), "--step", "10", "--index", "0", *common]) == 1
    out = capsys.readouterr().out
    assert "causes: scheduler; explanation complete" in out
    call = _calls()[_preview(10, 0).name]
    server = json.loads((WAN / "server" / "10" / "calls.jsonl").read_text().splitlines()[0])
    for sigmas in (call["scheduler"]["sigmas"], server["scheduler"]["sigmas"]):
        assert f"{sigmas[1]:.3f}" in out and f"{sigmas[-2]:.3f}" in out, (sigmas, out)


# ------------------------------------------------------------------ the UI preset

UI = FIXTURES / "aitk_wan21_ui"
UI_JOB = UI / "output" / "aitk_wan21_ui"

# bf16, qfloat8 transformer and text encoder, low_vram: every preview differs from the
# server's fp32 render by precision and by the scheduler; item 2 (304x320, one frame) is
# larger than the VAE's 256 px tile, so ai-toolkit's tiled decode (low_vram) is a cause.
UI_CAUSES = {(step, i): ["precision", "scheduler"] for step in (0, 10, 20) for i in range(3)}
for _step in (0, 10, 20):
    UI_CAUSES[(_step, 2)] = ["precision", "scheduler", "vae_tiling"]


@pytest.fixture(scope="module")
def ui_job(tmp_path_factory) -> Path:
    """The UI job with its fp32 training weights in place of the bf16 checkpoints: the
    weights its previews were rendered with."""
    import shutil

    job = Path(shutil.copytree(UI_JOB, tmp_path_factory.mktemp("ui") / UI_JOB.name))
    for weights in (UI / "fp32_weights").iterdir():
        shutil.copyfile(weights, job / weights.name)
    return job


def test_ui_preset_settings_follow_the_call_log():
    job = read_job(UI_JOB)
    assert job.vae_tiling is True  # low_vram
    assert (job.quantization.qtype, job.quantization.qtype_te) == ("qfloat8", "qfloat8")
    calls = _calls(UI)
    for preview in job.previews:
        call = calls[preview.path.name]
        checkpoint = job.checkpoint_for_step(preview.step)
        request = as_configured_request(job, checkpoint)
        pair = pair_for(job, job.samples[preview.index], checkpoint, request=request,
                        request_index=preview.index)  # fmt: skip
        p = pair.preview
        assert call["vae_tiling"] is True  # on for every call...
        assert p.vae_tiling is (max(p.width, p.height) > 256)  # ...acting above the tile
        assert (p.dtype, p.text_encoder_cast) == ("bfloat16", True)
        assert call["dtypes"]["transformer"] == "torch.bfloat16"
        assert (p.width, p.height, p.num_frames) == (
            call["width"], call["height"], call["num_frames"]
        )  # fmt: skip
        assert sorted(pair.differences) == UI_CAUSES[(preview.step, preview.index)]


def test_ui_quantization_takes_every_linear_ai_toolkit_quantized():
    """ai-toolkit's call log counts the quantized Linears (UMT5 with the transformer's
    qtype); parity's quantization of the same checkpoint gives those counts."""
    from parity.render.models import ModelSource, load_pipeline
    from parity.render.quantize import quantize_text_encoder, quantize_transformer
    from parity.wan.family import WAN21

    call = json.loads((UI / "calls.jsonl").read_text(encoding="utf-8").splitlines()[0])
    layers = call["linear_layers"]
    ref = str(BASE)
    pipe = load_pipeline(ModelSource(ref, ref, ref, "tiny"), family=WAN21)
    transformer = quantize_transformer(pipe.transformer, "qfloat8", WAN21.quantize_exclude)
    assert transformer == sum(layers["transformer"].values()) == 26
    assert quantize_text_encoder(pipe.text_encoder, "qfloat8") == sum(
        layers["text_encoder"].values()
    )


def test_ui_preset_previews_within_bf16_float_noise(ui_job: Path, tmp_path: Path, float_noise):
    """bf16, qfloat8 transformer and text encoder, both cast like ai-toolkit's loader,
    the LoRA beside the weights and the tiled decode at 304x320: each 41-frame clip
    within its own measured noise floor."""
    out = tmp_path / "previews"
    assert main(["preview", str(ui_job), "--base-model", str(BASE), "--out", str(out)]) == 0
    for entry in json.loads((out / "effective.json").read_text(encoding="utf-8")):
        (stored,) = (UI_JOB / "samples").glob(f"*__{entry['step']:09d}_{entry['index']}.webp")
        render = list(load_clip(out / entry["image"]).frames)
        lossless = _frames(UI / "lossless_previews" / stored.stem)
        assert len(render) == len(lossless) == (1 if entry["index"] == 2 else 41)
        video = len(render) > 1
        floor = float_noise.floor(
            entry["settings"], render if video else render[0], base_model=BASE
        )
        float_noise.check(
            f"{stored.name} before WebP",
            lossless if video else lossless[0],
            render if video else render[0],
            dtype="bfloat16",
            floor=floor,
        )


def test_ui_preset_causes(tmp_path: Path, ui_job: Path):
    out = tmp_path / "run"
    args = ["run", str(ui_job), "--base-model", str(BASE), "--device", "cpu", "--no-history"]
    assert main([*args, "--out", str(out)]) == 1
    rows = _rows(out / "results.json")
    assert set(rows) == set(UI_CAUSES)
    for key, row in rows.items():
        assert row["causes"] == UI_CAUSES[key] and row["explained"] is True, (key, row["detail"])
        assert row["noise_floor"] is not None  # a bf16 preview side
        # Precision is proven by its leave-one-out render; the others are confirmed or
        # listed with their measured effect against the case's floor, never dropped.
        confirmed = {c["cause"] for c in row["counterfactuals"] if c["confirmed"]}
        below = {u["cause"] for u in row["below_noise_floor"]}
        assert "precision" in confirmed and confirmed | below == set(UI_CAUSES[key]), key


# --------------------------------------------------------- Wan 2.2 14B text to video

WAN22 = FIXTURES / "aitk_wan22"
WAN22_JOB = WAN22 / "output" / "aitk_wan22"
WAN22_BASE = WAN22 / "tiny_wan22"

# Euler shift 5 against the checkpoint's UniPC everywhere; item 2 (80x64) is floored to
# 32 by wan22_14b_t2v: 64x64.
WAN22_CAUSES = {(step, i): ["scheduler"] for step in (0, 10, 20) for i in range(4)}
for _step in (0, 10, 20):
    WAN22_CAUSES[(_step, 2)] = ["scheduler", "snapping"]


def test_wan22_reads_each_lora_pair_as_one_checkpoint():
    job = read_job(WAN22_JOB)
    assert (job.family, job.reference_model) == ("wan22", "wan22_14b_t2v")
    assert [c.step for c in job.checkpoints] == [10, 20]
    for checkpoint in job.checkpoints:
        high, low = checkpoint.paths
        assert high.name.endswith("_high_noise.safetensors")
        assert low.name.endswith("_low_noise.safetensors")
    request = as_configured_request(job, job.checkpoint_for_step(20))
    assert [(lo.transformer, Path(lo.path).name) for lo in request.loras] == [
        ("high", "aitk_wan22_high_noise.safetensors"),
        ("low", "aitk_wan22_low_noise.safetensors"),
    ]


def test_wan22_preview_settings_follow_the_call_log():
    job = read_job(WAN22_JOB)
    calls = _calls(WAN22)
    assert len(calls) == len(job.previews) == 12
    for preview in job.previews:
        call = calls[preview.path.name]
        checkpoint = job.checkpoint_for_step(preview.step)
        request = as_configured_request(job, checkpoint)
        pair = pair_for(job, job.samples[preview.index], checkpoint, request=request,
                        request_index=preview.index)  # fmt: skip
        p, r = pair.preview, pair.reference
        assert (p.width, p.height) == (call["width"], call["height"])
        assert p.scheduler_shift == call["scheduler"]["config"]["shift"] == 5.0
        assert call["boundary_ratio"] == 0.875
        if checkpoint is not None:
            for expert, lora in (("transformer", p.lora), ("transformer_2", p.lora_2)):
                network = call["lora"][expert]["networks"][0]
                assert lora is not None and lora.scale == network["multiplier"]
                assert lora.merged is network["is_merged_in"] is True
            assert r.lora is not None and r.lora_2 is not None
            assert r.lora.path.endswith("_high_noise.safetensors")
            assert r.lora_2.path.endswith("_low_noise.safetensors")
        assert sorted(pair.differences) == WAN22_CAUSES[(preview.step, preview.index)]


def test_wan22_previews_reproduced(tmp_path: Path, float_noise):
    """The pair merged into both experts, Euler shift 5 switching experts at the
    boundary: every frame within float32 noise (ai-toolkit's merge moves a few values
    by one level, as the fixture README measured)."""
    out = tmp_path / "previews"
    assert (
        main(["preview", str(WAN22_JOB), "--base-model", str(WAN22_BASE), "--out", str(out)]) == 0
    )
    for entry in json.loads((out / "effective.json").read_text(encoding="utf-8")):
        (stored,) = (WAN22_JOB / "samples").glob(f"*__{entry['step']:09d}_{entry['index']}.webp")
        render = list(load_clip(out / entry["image"]).frames)
        # ai-toolkit's merge already moves a few values by a level here; another CPU's
        # kernels add their own noise, which the clip's measured floor allows for.
        floor = float_noise.floor(entry["settings"], render, base_model=WAN22_BASE)
        lossless = _frames(WAN22 / "lossless_previews" / stored.stem)
        float_noise.check(stored.name, lossless, render, floor=floor)


@pytest.mark.parametrize("server", ["server", "server_no_compile"])
def test_wan22_server_renders_are_reproduced(server: str, tmp_path: Path, float_noise):
    """The server's wan22_14b_t2v with its LoRA pair (high into transformer, low into
    transformer_2): parity's render without the rank padding of the hotswap and without
    torch.compile is within float32 noise of both the compiled and the plain server."""
    folder = WAN22 / server / "20"
    out = tmp_path / "render"
    args = ["render", str(folder / "request.json"), "--lora-root", str(WAN22 / "output")]
    assert main([*args, "--base-model", str(WAN22_BASE), "--out", str(out)]) == 0
    effective = json.loads((out / "effective.json").read_text(encoding="utf-8"))
    assert effective[2]["settings"]["width"] == 64  # 80 floored to 32
    for i, entry in enumerate(effective):
        render = list(load_clip(out / entry["image"]).frames)
        floor = float_noise.floor(entry["settings"], render, base_model=WAN22_BASE)
        float_noise.check(f"{server} 20/{i}", _frames(folder / str(i)), render, floor=floor)


def test_wan22_causes_and_corrected_pairs(tmp_path: Path):
    out = tmp_path / "run"
    args = ["run", str(WAN22_JOB), "--base-model", str(WAN22_BASE), "--no-history"]
    assert main([*args, "--out", str(out)]) == 1
    rows = _rows(out / "results.json")
    assert set(rows) == set(WAN22_CAUSES)
    for key, row in rows.items():
        assert row["causes"] == WAN22_CAUSES[key] and row["explained"] is True, key
        confirmed = sorted(c["cause"] for c in row["counterfactuals"] if c["confirmed"])
        assert confirmed == WAN22_CAUSES[key], key
    index = corrected_index(out, 20)
    assert index["placement"] == {}
    place = index["closest"]["2"]
    request = json.loads((out / "corrected_requests" / place["file"]).read_text())
    assert [lo["transformer"] for lo in request["loras"]] == ["high", "low"]
    assert (
        request["prompts"][place["prompt"]]["width"],
        request["prompts"][place["prompt"]]["height"],
    ) == (80, 64)
    reasons = " ".join(index["cannot_reproduce"]["2"])
    assert "not a multiple of 32" in reasons and "UniPCMultistepScheduler" in reasons


def test_inspect_shows_frames_and_rate(capsys):
    assert main(["inspect", str(JOB)]) == 0
    table = capsys.readouterr().out
    assert "frames" in table.splitlines()[4]
    assert "9@16fps" in table and "1@16fps" in table and "9@8fps" in table
