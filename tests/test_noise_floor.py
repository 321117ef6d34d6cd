"""Noise floors: measured per render, one verdict rule, recorded on every row that needs one.

The rule under test: a difference is float noise when it is within the fixed rule (the
thresholds for run verdicts, the float-noise levels for images made elsewhere) or within
NOISE_FLOOR_K times the render's own measured floor, whichever allows more.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from parity.attribute import ALL, Attribution, Counterfactual, UnconfirmedCause
from parity.cli import main
from parity.compare import (
    FLOAT_NOISE_LEVELS,
    NOISE_FLOOR_K,
    Comparison,
    Difference,
    NoiseFloor,
    Rule,
    Thresholds,
    inspect_codec,
    measure_floor,
    same_within_noise,
    widened,
    within_noise,
)
from parity.job import read_job
from parity.render.engine import alternate_kernels
from parity.results import CSV_COLUMNS, ResultRow, Verdict, read_results, write_results
from parity.run import RunOptions, measure_job_noise, run_job
from parity.run.runner import unconfirmed_causes
from parity.settings import Cause, RenderSettings
from parity.testing.jobs import AITK_REAL_BASE, FIXTURES, TINY_BASE, shared_engine, write_job

UI_JOB = FIXTURES / "aitk_ui_zimage" / "output" / "aitk_zimage_ui"

#: The results.csv columns before noise floors; they never change.
BASE_COLUMNS = (
    "job,step,index,preview,render,width_preview,height_preview,width_render,height_render,"
    "ssim,psnr,ms_ssim,latent_distance,lpips,verdict,causes,explained,detail"
).split(",")


def _floor(**changes) -> NoiseFloor:
    values = dict(
        method="sdpa math vs default",
        dtype="bfloat16",
        render="reference",
        max_abs_diff=12,
        mean_abs_diff=1.25,
        ssim=0.985,
        psnr=40.5,
        encoded_max_abs_diff=14,
        encoded_mean_abs_diff=1.5,
    )
    return NoiseFloor(**{**values, **changes})


def _comparison(ssim: float, psnr: float, latent: float | None = 0.01) -> Comparison:
    return Comparison(ssim, psnr, None, latent, None, False, 64, 64, 64, 64, True)


# ------------------------------------------------------------------- the record


def test_floor_round_trips_through_results_json_and_csv(tmp_path: Path) -> None:
    floor = _floor()
    unconfirmed = UnconfirmedCause(Cause.PRECISION, 6, 0.4, True, "precision: ... not confirmed")
    rows = [
        ResultRow(
            job="j",
            step=10,
            index=0,
            verdict=Verdict.MISMATCH,
            causes=[Cause.CFG, Cause.PRECISION],
            candidate_causes=[Cause.CFG, Cause.PRECISION],
            noise_floor=floor,
            below_noise_floor=[unconfirmed],
        ),
        ResultRow(job="j", step=10, index=1, verdict=Verdict.MATCH),
    ]
    write_results(tmp_path, rows)
    back = read_results(tmp_path)
    assert back[0].noise_floor == floor and isinstance(back[0].noise_floor, NoiseFloor)
    assert back[0].below_noise_floor == (unconfirmed,)
    assert back[1].noise_floor is None and back[1].below_noise_floor == ()
    assert NoiseFloor.from_json(json.loads(json.dumps(floor.to_json()))) == floor
    lossless = _floor(encoded_max_abs_diff=None, encoded_mean_abs_diff=None)
    assert NoiseFloor.from_json(lossless.to_json()) == lossless
    # The attribution a row stands for confirms only what its evidence confirmed.
    row = dataclasses.replace(back[0], counterfactuals=[_cf(ALL, True)])
    assert row.attribution is not None and row.attribution.confirmed == (Cause.CFG,)

    with open(tmp_path / "results.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(CSV_COLUMNS)
        first, second = list(reader)
    assert list(CSV_COLUMNS[: len(BASE_COLUMNS)]) == BASE_COLUMNS  # never renamed or moved
    assert first["below_noise_floor"] == "precision" and first["causes"] == "cfg;precision"
    assert int(first["noise_floor_max_abs_diff"]) == 12
    assert float(first["noise_floor_mean_abs_diff"]) == 1.25
    assert float(first["noise_floor_ssim"]) == 0.985 and float(first["noise_floor_psnr"]) == 40.5
    assert second["noise_floor_max_abs_diff"] == "" and second["below_noise_floor"] == ""


def test_noise_floor_is_scored_lossless_and_in_the_preview_codec(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(a).save(tmp_path / "p.jpg")
    codec = inspect_codec(tmp_path / "p.jpg")
    lossless = measure_floor(a, b, method="m", dtype="bfloat16")
    encoded = measure_floor(a, b, codec=codec, method="m", dtype="bfloat16")
    assert lossless.max_abs_diff == encoded.max_abs_diff == 3
    assert lossless.encoded_max_abs_diff is None and not lossless.encoded
    assert encoded.encoded and encoded.encoded_max_abs_diff is not None
    assert encoded.ssim != lossless.ssim  # SSIM in the preview's domain
    with pytest.raises(ValueError, match="scored lossless"):
        lossless.levels(encoded=True)


# -------------------------------------------------------------- the verdict rule


def test_verdict_rule_widens_with_a_larger_floor_and_never_narrows() -> None:
    t = Thresholds()
    grid = [_comparison(s, p) for s in (0.90, 0.95, 0.975, 0.979, 0.98, 0.99, 1.0)
            for p in (25.0, 33.0, 37.9, 38.0, 45.0, 100.0)]  # fmt: skip
    # Growing floors: exact, float32-like, a bf16 floor, a noisier one.
    floors = [
        _floor(ssim=1.0, psnr=100.0),
        _floor(ssim=0.99995, psnr=60.9),
        _floor(ssim=0.99, psnr=42.0),
        _floor(ssim=0.97, psnr=36.0),
    ]
    previous = [t.is_match(c) for c in grid]
    assert previous == [c.ssim >= 0.98 and c.psnr >= 38.0 for c in grid]  # today's rule
    for floor in floors:
        now = [t.is_match(c, floor) for c in grid]
        assert all(n or not p for n, p in zip(now, previous, strict=True))  # never narrower
        previous = now
    # A float32-sized floor changes nothing; a bf16 one lets a noisy render match.
    assert [t.is_match(c, floors[1]) for c in grid] == [t.is_match(c) for c in grid]
    noisy = _comparison(0.975, 35.0)
    assert not t.is_match(noisy) and t.is_match(noisy, floors[2])
    # k times the floor, exactly: 1 - k (1 - SSIM) and PSNR - 20 log10 k.
    limits = widened(t.rule, floors[2])
    assert limits.ssim_min == pytest.approx(1 - NOISE_FLOOR_K * 0.01)
    assert limits.psnr_min == pytest.approx(42.0 - 20 * np.log10(NOISE_FLOOR_K))
    # What the floor does not measure keeps its limit; a size change never matches.
    assert not t.is_match(_comparison(1.0, 100.0, latent=0.2), floors[3])
    resized = dataclasses.replace(_comparison(1.0, 100.0), resized=True)
    assert not t.is_match(resized, floors[3])


def test_levels_rule_widens_with_the_floor_and_keeps_the_float32_rule() -> None:
    rule = Rule(max_abs_diff=FLOAT_NOISE_LEVELS, mean_abs_diff=FLOAT_NOISE_LEVELS)
    diff = Difference(max_abs_diff=30, mean_abs_diff=2.0)
    assert not within_noise(diff, rule)
    assert not within_noise(diff, rule, _floor(max_abs_diff=9, mean_abs_diff=1.0))  # 27 < 30
    assert within_noise(diff, rule, _floor(max_abs_diff=10, mean_abs_diff=1.0))  # 30, 3.0
    assert not within_noise(diff, rule, _floor(max_abs_diff=10, mean_abs_diff=0.5))  # mean
    assert within_noise(Difference(max_abs_diff=1, mean_abs_diff=0.1), rule, _floor(max_abs_diff=0))

    base = np.full((16, 16, 3), 100, np.uint8)
    one_off = base.copy()
    one_off[0, 0, 0] = 101
    far = base.copy()
    far[0, 0, 0] = 120
    assert same_within_noise(base, one_off).same  # float32: within 1/255, no floor needed
    assert not same_within_noise(base, far).same
    floor = _floor(dtype="float32", max_abs_diff=7, mean_abs_diff=0.1)
    assert same_within_noise(base, far, floor=floor).same  # 20 <= 3 * 7
    check = same_within_noise(base, far, dtype="bfloat16", floor=floor)
    assert check.same and check.limit == 21 and check.floor == floor
    with pytest.raises(ValueError, match="measured noise floor"):
        same_within_noise(base, far, dtype="bfloat16")  # no constant for bf16


# ---------------------------------------------------------------- the engine


def test_alternate_path_moves_bf16_renders_and_leaves_the_default_path_alone() -> None:
    import torch

    engine = shared_engine(TINY_BASE)
    settings = RenderSettings(
        prompt="a red cube", negative_prompt="", width=64, height=64,
        pipeline_guidance=2.0, steps=3, seed=5, family="zimage", dtype="bfloat16",
    )  # fmt: skip
    before = np.asarray(engine.render(settings).image)
    alternate = np.asarray(engine.render(settings, alternate=True).image)
    after = np.asarray(engine.render(settings).image)
    assert np.array_equal(before, after)  # the alternate embeddings never feed it
    assert not np.array_equal(before, alternate)
    keys = {(text, alt) for text, _, alt in engine._embeddings}
    assert {("a red cube", False), ("a red cube", True), ("", True)} <= keys
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with alternate_kernels("cpu"):
        pass
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


# --------------------------------------------------------------------- the run


def _cf(name: str, confirmed: bool, match: bool = True) -> Counterfactual:
    settings = RenderSettings("p", "", 8, 8, 0.0, 1, 1, "zimage")
    return Counterfactual(name, (), settings, 0.99, 40.0, None, match, confirmed=confirmed)


def test_unconfirmed_causes_compare_each_leave_one_out_with_the_all_switched_render() -> None:
    everything = np.full((8, 8, 3), 100, np.uint8)
    small, large = everything.copy(), everything.copy()
    small[0, 0, 0], large[0, 0, 0] = 104, 180
    result = Attribution(
        candidates=(Cause.CFG, Cause.SEED, Cause.PRECISION),
        confirmed=(Cause.SEED,),
        explained=True,
        counterfactuals=(
            _cf(ALL, False),
            _cf("cfg", False),
            _cf("seed", True, match=False),
            _cf("precision", False),
        ),
        renders=4,
    )
    images = {ALL: everything, "cfg": large, "seed": large, "precision": small}
    reference = RenderSettings("p", "", 8, 8, 4.0, 1, 1, "zimage")
    preview = reference.replace(pipeline_guidance=3.0, dtype="bfloat16", text_encoder_cast=True)
    floor = _floor(max_abs_diff=2, mean_abs_diff=0.5)
    found = {u.cause: u for u in unconfirmed_causes(result, images, reference, preview, floor)}
    assert set(found) == {Cause.CFG, Cause.PRECISION}  # never the confirmed one
    precision, cfg = found[Cause.PRECISION], found[Cause.CFG]
    assert (precision.effect_max_abs_diff, precision.within_noise) == (4, True)  # 4 <= 3 * 2
    assert (cfg.effect_max_abs_diff, cfg.within_noise) == (80, False)
    assert precision.note.startswith("precision: the preview is bfloat16 (text encoder cast)")
    assert "max 4/255" in precision.note and "noise floor: max 2/255" in precision.note
    assert "within this case's float noise" in precision.note
    assert "beyond" in cfg.note and "guidance 3, the server's 4" in cfg.note
    # Without a floor the allowance is the float-noise levels.
    (alone,) = [
        u
        for u in unconfirmed_causes(result, images, reference, preview, None)
        if u.cause is Cause.PRECISION
    ]
    assert not alone.within_noise and f"max {FLOAT_NOISE_LEVELS}/255" in alone.note


@pytest.fixture(scope="module")
def bf16_reference_run(tmp_path_factory: pytest.TempPathFactory) -> list[ResultRow]:
    """A bf16 job run against a bf16 server (--dtype bf16), as on a GPU: guidance 4
    (ai-toolkit gives diffusers 3, the server 4), and the preview's text encoder cast and
    LoRA merged into bf16 weights against the server's bf16 PEFT adapter."""
    root = tmp_path_factory.mktemp("bf16-ref")
    sample = {"width": 64, "height": 64, "seed": 3, "guidance_scale": 4, "sample_steps": 4,
              "neg": "", "samples": [{"prompt": "[trigger] a stone bridge"},
                                     {"prompt": "[trigger] a red cube"}]}  # fmt: skip
    folder = write_job(root, name="bf16", sample=sample, train_dtype="bf16",
                       checkpoints={10: {"scale_b": 0.15}})  # fmt: skip
    options = RunOptions(reference_dtype="bfloat16", progress=False)
    summary = run_job(read_job(folder), shared_engine(TINY_BASE), root / "out", options)
    return summary.rows


def test_a_bf16_reference_row_always_carries_its_floor(bf16_reference_run) -> None:
    assert len(bf16_reference_run) == 2
    for row in bf16_reference_run:
        floor = row.noise_floor
        assert floor is not None and floor.render == "reference"
        assert floor.dtype == "bfloat16" and floor.method == "sdpa math vs default"
        assert floor.encoded and floor.max_abs_diff > 0  # scored like the JPEG preview too


def test_a_cause_within_the_floor_stays_a_cause(bf16_reference_run) -> None:
    """Both differences come from the config (cfg - 1; cast and LoRA arithmetic): both are
    causes, the evidence confirms cfg, and precision is confirmed or listed with its
    effect below the floor, never missing."""
    for row in bf16_reference_run:
        assert row.verdict is Verdict.MISMATCH and row.explained
        assert list(row.causes) == [Cause.CFG, Cause.PRECISION] == sorted(row.candidate_causes)
        confirmed = {c.name for c in row.counterfactuals if c.leaves_out_a_cause and c.confirmed}
        unconfirmed = {str(u.cause) for u in row.below_noise_floor}
        assert "cfg" in confirmed
        assert confirmed | unconfirmed == {"cfg", "precision"} and not confirmed & unconfirmed
        for u in row.below_noise_floor:
            assert u.note.startswith(f"{u.cause}: the preview is bfloat16 (text encoder cast")
            assert u.within_noise == ("within this case's float noise" in u.note)


def test_a_float32_match_measures_no_floor(tmp_path: Path) -> None:
    sample = {"width": 64, "height": 64, "seed": 3, "guidance_scale": 0, "sample_steps": 3,
              "neg": "", "samples": [{"prompt": "[trigger] a clean match"}]}  # fmt: skip
    folder = write_job(tmp_path, name="fp32", sample=sample)
    engine = shared_engine(TINY_BASE)
    renders = engine.renders
    summary = run_job(read_job(folder), engine, tmp_path / "out", RunOptions(progress=False))
    (row,) = summary.rows
    assert row.verdict is Verdict.MATCH and row.noise_floor is None
    assert engine.renders - renders == 1  # the reference render only


# -------------------------------------------------------------- parity noise


def test_measure_job_noise_floors_one_preview_per_step_both_sides() -> None:
    job = read_job(UI_JOB)
    rows = measure_job_noise(job, shared_engine(AITK_REAL_BASE), steps=(0, 10))
    assert [(r.step, r.index, r.side) for r in rows] == [
        (0, 0, "preview"), (0, 0, "reference"), (10, 0, "preview"), (10, 0, "reference"),
    ]  # fmt: skip
    for r in rows:
        assert r.floor.encoded  # the previews are JPEGs: scored as the run scores them
        limits = widened(Thresholds().rule, r.floor)
        assert (r.ssim_min, r.psnr_min) == (limits.ssim_min, limits.psnr_min)
        assert r.ssim_min <= Thresholds().ssim_min and r.seconds > 0
    bf16 = [r for r in rows if r.side == "preview"]
    assert all(r.floor.dtype == "bfloat16" and r.floor.max_abs_diff > 0 for r in bf16)
    assert all(r.floor.dtype == "float32" for r in rows if r.side == "reference")


def test_parity_noise_prints_per_case_figures_and_exits_0(capsys) -> None:
    args = ["noise", str(UI_JOB), "--base-model", str(AITK_REAL_BASE), "--steps", "0"]
    assert main([*args, "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "noise floor per case on cpu (sdpa math vs default)" in lines[0]
    assert lines[1].split() == [
        "step", "index", "side", "dtype", "max", "mean", "SSIM", "PSNR", "SSIM", ">=",
        "PSNR", ">=", "s",
    ]  # fmt: skip
    preview, reference = lines[2].split(), lines[3].split()
    assert preview[:4] == ["0", "0", "preview", "bfloat16"] and int(preview[4]) > 0
    assert reference[:4] == ["0", "0", "reference", "float32"] and int(reference[4]) <= 1
    assert f"k = {NOISE_FLOOR_K:g}:" in out


def test_served_bf16_image_is_judged_against_the_renders_own_floor(tmp_path: Path) -> None:
    from PIL import Image

    from parity.compare import check_served

    rng = np.random.default_rng(1)
    render = rng.integers(40, 200, (32, 32, 3), dtype=np.uint8)
    served = np.clip(render.astype(int) + rng.integers(-6, 7, render.shape), 0, 255)
    Image.fromarray(served.astype(np.uint8)).save(tmp_path / "served.png")
    with pytest.raises(ValueError, match="measured noise floor"):
        check_served(tmp_path / "served.png", render, dtype="bfloat16")
    quiet = np.clip(render.astype(int) + 1, 0, 255).astype(np.uint8)  # a 1-level floor
    loud = np.clip(render.astype(int) + rng.integers(-3, 4, render.shape), 0, 255)
    drift = check_served(tmp_path / "served.png", render, dtype="bfloat16", alternate_rgb=quiet)
    same = check_served(
        tmp_path / "served.png", render, dtype="bfloat16", alternate_rgb=loud.astype(np.uint8)
    )
    assert not drift.same and drift.limit == 3 and drift.floor.max_abs_diff == 1
    assert same.same and same.limit == 9 and same.floor.dtype == "bfloat16"


def test_corrected_requests_still_account_for_unconfirmed_causes() -> None:
    from parity.correct import corrected_requests
    from parity.plan import plan_cases

    job = read_job(UI_JOB)
    engine = shared_engine(AITK_REAL_BASE)
    cases = plan_cases(job, [0], device="cpu", checkpoint_scheduler=engine.checkpoint_scheduler,
                       reference_dtype=None, check_previews=False)  # fmt: skip
    previews = {c.index: c.pair.preview for c in cases}
    note = "precision: the preview is bfloat16 ...; its effect here ... so it is not confirmed"
    below = {0: [UnconfirmedCause(Cause.PRECISION, 6, 0.4, True, note)]}
    corrected = corrected_requests(job, 0, previews, unconfirmed=below, server_dtype="float32")
    reasons = corrected.cannot[0]
    assert any("quantized" in r for r in reasons)  # the blocker stays a blocker
    assert f"not confirmed here: {note}" in reasons
    assert not any("not confirmed" in r for r in corrected.cannot[1])
    # The request still sets what a request can set: the guidance diffusers must receive.
    number, position = corrected.closest[0]
    assert corrected.requests[number].prompts[position].guidance_scale == 3
