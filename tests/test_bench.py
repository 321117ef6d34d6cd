"""The benchmarks run end to end and build the full-size architecture correctly.

Timings are never asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIOS = re.compile(
    r"^ratios: parity/bare=\d+\.\d{3} attribute/bare=\d+\.\d{3} server/bare=\d+\.\d{3}$"
)

RENDER_RATIO = re.compile(r"^render ratio: parity-render/bare=\d+\.\d{3}$")
QWEN_RATIO = re.compile(r"^qwen-image ratio: parity/bare=\d+\.\d{3}$")
WAN_RATIO = re.compile(r"^wan21 ratio: parity/bare=\d+\.\d{3}$")
WAN_IDENTICAL = (
    "Wan 2.1 video job fixtures/aitk_wan21/output/aitk_wan21: bare renders identical to "
    "parity's reference renders: True"
)
QWEN_IDENTICAL = (
    "Qwen-Image job fixtures/aitk_qwen/output/aitk_qwen: bare renders identical to "
    "parity's reference renders: True"
)
ALTERNATE_CUDA = "sdpa math vs default, tf32 on vs off, reduced-precision reductions off vs on"


def _bench(module: str):
    """``bench.<module>`` from this checkout (``bench`` is not installed with parity)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{module}")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_quick_benchmark_prints_render_ratio_then_ratios_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--work", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert RATIOS.match(lines[-1]), lines[-1]
    # parity render vs a bare loop on the same request, measured in the same run.
    assert any(RENDER_RATIO.match(line) for line in lines[:-1]), proc.stdout[-3000:]
    # The bare loops and parity rendered the same images: same work timed.
    assert "identical to parity's reference renders: True" in proc.stdout
    assert "bare request renders identical to parity render's: True" in proc.stdout
    # The real ai-toolkit Qwen-Image job, through the same bare loop (the family's pipeline
    # adapter: true CFG, embeddings with their mask, its scheduler), is timed against
    # parity run in the same rounds and renders parity's reference images exactly.
    assert QWEN_IDENTICAL in proc.stdout, proc.stdout[-3000:]
    assert any(QWEN_RATIO.match(line) for line in lines[:-1]), proc.stdout[-3000:]
    # The same for the real Wan 2.1 video job: 9-frame clips, every frame the same.
    assert WAN_IDENTICAL in proc.stdout, proc.stdout[-3000:]
    assert any(WAN_RATIO.match(line) for line in lines[:-1]), proc.stdout[-3000:]
    # What the noise floors cost beside the renders: none on the float32 job, one
    # alternate-kernel render per preview on the real bf16 UI job (9 previews).
    floors = [line for line in lines if line.startswith("noise floor ")]
    assert floors[0].startswith("noise floor (b) parity: 0 extra renders of "), floors
    assert floors[1].startswith("noise floor (c) attribute: 0 extra renders of "), floors
    assert re.match(
        r"^noise floor \(c\) attribute, bf16 UI job fixtures/aitk_ui_zimage/output/"
        r"aitk_zimage_ui: 9 extra renders of \d+ \(0\.\d{3}\), \d+\.\d\d s of "
        r"\d+\.\d\d s rendering \(0\.\d{3}\)$",
        floors[2],
    ), floors


def test_full_size_refuses_cpu_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        _bench("__main__").main(["--full-size", "--device", "cpu", "--work", str(tmp_path)])
    message = str(info.value.code)
    assert "CUDA" in message and "--scale tiny" in message


def test_full_size_configs_are_the_real_model_sizes() -> None:
    bench = _bench("full_size")
    counts = bench.meta_parameter_counts("full")  # meta device: nothing allocated
    assert 6.0e9 < counts["transformer"] < 6.3e9  # Z-Image: 6B single-stream DiT
    assert 3.9e9 < counts["text_encoder"] < 4.1e9  # Qwen3 4B-class, tied embeddings
    assert 7e7 < counts["vae"] < 1e8  # 16-channel AutoencoderKL
    vae = bench.full_size_configs("full")["vae"]
    assert (vae["scaling_factor"], vae["shift_factor"]) == (0.3611, 0.1159)
    assert tuple(vae["block_out_channels"]) == (128, 256, 512, 512)


def test_builder_gives_a_working_pipeline_through_the_full_size_path() -> None:
    import numpy as np
    import torch

    pipe = _bench("full_size").build_pipeline("tiny", "cpu", "float32", turbo=True)
    params = list(pipe.transformer.parameters()) + list(pipe.text_encoder.parameters())
    assert all(p.device.type == "cpu" and not p.is_meta for p in params)
    # Buffers computed in the constructors survive the meta -> device step.
    for module in (pipe.transformer, pipe.text_encoder):
        for _, buffer in module.named_buffers():
            assert torch.isfinite(buffer).all()
    for name, p in pipe.transformer.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
    with torch.no_grad():
        out = pipe(
            prompt="a red cube",
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        )
    image = out.images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_full_size_path_runs_at_tiny_scale(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import parity.compare
    import parity.run.runner

    originals = (parity.run.runner.attribute, parity.compare.compare)
    code = _bench("__main__").main(
        ["--full-size", "--device", "cpu", "--scale", "tiny", "--quick", "--work", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert RATIOS.match(out.strip().splitlines()[-1]), out
    # parity's functions are unwrapped again after the in-process runs.
    assert (parity.run.runner.attribute, parity.compare.compare) == originals


FLEET_RATIO = re.compile(r"^fleet ratio: jobs-per-hour workers2/workers1=\d+\.\d{3}$")
GPU_SCRIPT = ROOT / "bench" / "gpu.sh"


def test_fleet_benchmark_prints_jobs_per_hour_of_1_and_2_workers(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--fleet", "--quick", "--work", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert FLEET_RATIO.match(lines[-1]), lines[-1]
    assert any(re.search(r"--workers 1: .* jobs/hour$", line) for line in lines)
    assert any(re.search(r"--workers 2: .* jobs/hour$", line) for line in lines)
    # The same work was timed: both runs rendered identical images for every job.
    assert "renders identical with 1 and 2 workers: True" in proc.stdout
    [runs] = tmp_path.glob("fleet-*")
    for workers in (1, 2):
        summary = json.loads((runs / f"workers{workers}-0" / "summary.json").read_text())
        assert summary["execution"]["backend"] == "local"
        assert len(summary["execution"]["workers"]) == workers
        assert [j["status"] for j in summary["jobs"]] == ["finished"] * 4


def test_gpu_script_runs_its_tiny_path_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**_env(), "PYTHON": sys.executable, "PARITY_WHEELS": str(tmp_path / "no-wheels")}
    proc = subprocess.run(
        ["bash", str(GPU_SCRIPT), "--tiny", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "full_size.log").read_text(encoding="utf-8")
    assert RATIOS.match(log.strip().splitlines()[-1]), log[-2000:]
    assert "OOM fallback: skipped" in log  # it caps CUDA memory: GPU only
    assert "noise floor: the default thresholds call" in log
    report = json.loads((out / "full_size.json").read_text(encoding="utf-8"))
    assert set(report["models"]) == {"turbo", "base"}
    floor = report["models"]["turbo"]["noise_floor"]
    assert set(floor["pairs"]) == {
        "attention: SDPA default vs math",
        "TF32: off vs on",
        "reduced-precision reductions: default vs flipped",
        "parity's alternate path (all three)",
    }
    # The floor a run records, from parity's own alternate path; no CUDA k measured yet.
    assert floor["run_floor"]["method"] in ("sdpa math vs default", ALTERNATE_CUDA)
    assert floor["noise_floor_k"] == 3.0
    for pair in floor["pairs"].values():
        assert {"lossless", "jpeg_q75_preview"} <= set(pair)
        assert 0.0 <= pair["lossless"]["ssim"] <= 1.0
