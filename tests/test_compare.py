"""Tests for parity.compare: metrics, codec matching, image loading, thresholds."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity import compare as C

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "aitk_real" / "tiny_zimage"
SAMPLES = ROOT / "fixtures" / "aitk_real" / "output" / "aitk_zimage" / "samples"


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, structured test picture (gradients plus blobs), uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    for c in range(3):
        fx, fy, phase = rng.uniform(0.02, 0.15, 2).tolist() + [rng.uniform(0, 6)]
        img[..., c] = 127 + 100 * np.sin(fx * xx + phase) * np.cos(fy * yy)
    return np.clip(img, 0, 255).astype(np.uint8)


def _noisy(img: np.ndarray, amplitude: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amplitude, amplitude + 1, img.shape)
    return np.clip(img.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _save(img: np.ndarray, path: Path, **options) -> Path:
    Image.fromarray(img).save(path, **options)
    return path


# --------------------------------------------------------------------------- metrics


def test_identical_images_score_perfectly():
    img = _smooth_image(64, 80)
    assert C.ssim(img, img) == 1.0
    assert C.ms_ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert C.psnr(img, img) == math.inf
    result = C.compare(img, img.copy())
    assert result.ssim == 1.0
    assert result.psnr == C.PSNR_IDENTICAL_DB
    assert math.isfinite(result.psnr)
    assert result.resized is False
    assert (result.width_preview, result.height_preview) == (80, 64)
    assert C.distance(result) == 0.0
    assert C.Thresholds().is_match(result)


@pytest.mark.parametrize("shape", [(64, 80), (200, 190), (10, 12), (5, 9), (1, 1)])
def test_ssim_agrees_with_scikit_image(shape):
    from skimage.metrics import structural_similarity

    a = _smooth_image(*shape)
    b = _noisy(a, 20)
    win = min(11, *shape)
    win = win if win % 2 else win - 1
    reference = structural_similarity(
        a,
        b,
        channel_axis=-1,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        win_size=win,
    )
    assert C.ssim(a, b) == pytest.approx(reference, abs=2e-5)  # float32 evaluation


def test_metrics_fall_as_noise_grows():
    img = _smooth_image(96, 96)
    light, heavy = _noisy(img, 3), _noisy(img, 40)
    assert 1.0 > C.ssim(img, light) > C.ssim(img, heavy)
    assert 1.0 > C.ms_ssim(img, light) > C.ms_ssim(img, heavy)
    assert C.psnr(img, light) > C.psnr(img, heavy)


def test_psnr_in_decibels():
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    brighter = img + np.uint8(10)  # every value off by 10 -> MSE 100
    assert C.psnr(img, brighter) == pytest.approx(10 * math.log10(255**2 / 100))


def test_ms_ssim_on_tiny_images_uses_fewer_scales():
    for shape in [(1, 1), (5, 7), (16, 16), (40, 30)]:
        a = _smooth_image(*shape)
        b = _noisy(a, 30)
        value = C.ms_ssim(a, b)
        assert 0.0 <= value <= 1.0
    # Below 22 px only one scale fits, and MS-SSIM reduces to SSIM.
    a = _smooth_image(20, 20)
    b = _noisy(a, 10)
    assert C.ms_ssim(a, b) == pytest.approx(max(C.ssim(a, b), 0.0))
    assert C._ms_ssim_scales(1024, 1024) == 5
    assert C._ms_ssim_scales(176, 400) == 5
    assert C._ms_ssim_scales(175, 400) == 4


def test_metrics_reject_mismatched_or_wrong_arrays():
    a = _smooth_image(16, 16)
    with pytest.raises(ValueError, match="differ in size"):
        C.ssim(a, _smooth_image(16, 17))
    with pytest.raises(ValueError, match="uint8"):
        C.psnr(a.astype(np.float32), a.astype(np.float32))


# --------------------------------------------------------------------------- loading


def test_load_rgb_converts_to_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    rgb = C.load_rgb(path)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], gray) and np.array_equal(rgb[..., 2], gray)


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["empty", "truncated_jpeg", "truncated_png", "text", "missing"])
def test_bad_files_raise_image_read_error_naming_the_file(tmp_path, kind):
    img = _smooth_image(64, 64)
    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        data = _jpeg_bytes(img)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_png":
        path = tmp_path / "bad_truncated.png"
        buffer = io.BytesIO()
        Image.fromarray(_noisy(img, 60)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "text":
        path.write_text("this is not an image\n" * 20)
    with pytest.raises(C.ImageReadError) as info:
        C.load_rgb(path)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)
    if kind == "empty":
        assert "0 bytes" in info.value.reason


# --------------------------------------------------------------------------- codecs


def test_pillow_default_jpeg_is_quality_75_420(tmp_path):
    path = _save(_smooth_image(64, 64), tmp_path / "default.jpg")
    codec = C.inspect_codec(path)
    assert codec.format == "JPEG"
    assert codec.quality == 75 and codec.quality_exact
    assert codec.subsampling == "4:2:0"
    assert not codec.lossless


@pytest.mark.parametrize(
    ("quality", "subsampling", "name"),
    [(95, 0, "4:4:4"), (90, 1, "4:2:2"), (50, 2, "4:2:0"), (20, 0, "4:4:4"), (3, 2, "4:2:0")],
)
def test_jpeg_quality_and_subsampling_detected(tmp_path, quality, subsampling, name):
    path = _save(
        _smooth_image(48, 64),
        tmp_path / f"q{quality}.jpg",
        quality=quality,
        subsampling=subsampling,
    )
    codec = C.inspect_codec(path)
    assert (codec.quality, codec.subsampling) == (quality, name)
    assert codec.quality_exact


def test_png_is_lossless(tmp_path):
    img = _smooth_image(20, 30)
    codec = C.inspect_codec(_save(img, tmp_path / "x.png"))
    assert codec.format == "PNG" and codec.lossless and codec.quality is None
    assert np.array_equal(C.encode_like(img, codec), img)
    floor = C.jpeg_floor(img, codec)
    assert floor == {"ssim": 1.0, "psnr": C.PSNR_IDENTICAL_DB}


def test_inspect_codec_rejects_non_images(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(C.ImageReadError, match="notes.jpg"):
        C.inspect_codec(path)


def test_encode_like_reproduces_a_pillow_jpeg_exactly(tmp_path):
    render = _smooth_image(80, 112)
    path = _save(render, tmp_path / "preview.jpg")
    preview = C.load_rgb(path)
    codec = C.inspect_codec(path)
    # Encoding the lossless render the way the preview was encoded gives the preview.
    assert np.array_equal(C.encode_like(render, codec), preview)
    by_quality = C.Codec(format="JPEG", quality=75, subsampling="4:2:0")
    assert np.array_equal(C.encode_like(render, by_quality), preview)
    # Without codec matching the same render scores below 1; with it, exactly 1.
    assert C.compare(preview, render).ssim < 1.0
    matched = C.compare(preview, render, codec=codec)
    assert matched.ssim == 1.0 and matched.codec_matched


def test_encode_like_of_a_decoded_preview_is_near_identical():
    path = sorted(SAMPLES.glob("*.jpg"))[-1]
    preview = C.load_rgb(path)
    again = C.encode_like(preview, C.inspect_codec(path))
    assert again.shape == preview.shape
    assert C.ssim(preview, again) > 0.98
    assert C.psnr(preview, again) > 40.0


def test_jpeg_floor_is_below_one_for_jpeg(tmp_path):
    img = _noisy(_smooth_image(64, 64), 15)
    codec = C.inspect_codec(_save(img, tmp_path / "p.jpg"))
    floor = C.jpeg_floor(img, codec)
    assert set(floor) == {"ssim", "psnr"}
    assert 0.0 < floor["ssim"] < 1.0
    assert 0.0 < floor["psnr"] < C.PSNR_IDENTICAL_DB
    better = C.jpeg_floor(img, C.Codec(format="JPEG", quality=95, subsampling="4:4:4"))
    assert floor["ssim"] < better["ssim"] < 1.0


def test_real_ai_toolkit_previews_are_q75_420():
    previews = sorted(SAMPLES.glob("*.jpg"))
    assert len(previews) == 15
    for path in previews:
        codec = C.inspect_codec(path)
        assert (codec.format, codec.quality, codec.subsampling) == ("JPEG", 75, "4:2:0"), path
        assert codec.quality_exact, path


# --------------------------------------------------------------------------- sizes


def test_size_mismatch_is_flagged_and_never_a_match():
    preview = _smooth_image(64, 48)
    render = np.asarray(Image.fromarray(preview).resize((96, 128), Image.Resampling.NEAREST))
    aligned_preview, aligned, resized = C.align_sizes(preview, render)
    assert resized and aligned.shape == preview.shape and aligned_preview is preview
    assert C.align_sizes(preview, preview)[2] is False
    result = C.compare(preview, render)
    assert result.resized
    assert (result.width_preview, result.height_preview) == (48, 64)
    assert (result.width_render, result.height_render) == (96, 128)
    assert result.ssim > 0.9  # same content, so the scores are high...
    assert not C.Thresholds(ssim_min=0.0, psnr_min=0.0).is_match(result)  # ...yet no match


# --------------------------------------------------------------------------- thresholds


def _comparison(**overrides) -> C.Comparison:
    fields = dict(
        ssim=1.0,
        psnr=C.PSNR_IDENTICAL_DB,
        ms_ssim=1.0,
        latent_distance=None,
        lpips=None,
        resized=False,
        width_preview=64,
        height_preview=64,
        width_render=64,
        height_render=64,
    )
    fields.update(overrides)
    return C.Comparison(**fields)


def test_thresholds_check_each_criterion():
    t = C.Thresholds()
    assert t.is_match(_comparison())
    assert not t.is_match(_comparison(ssim=t.ssim_min - 1e-3))
    assert not t.is_match(_comparison(psnr=t.psnr_min - 0.1))
    assert not t.is_match(_comparison(latent_distance=t.latent_distance_max * 2))
    assert t.is_match(_comparison(latent_distance=t.latent_distance_max / 2))
    assert C.distance(_comparison(ssim=0.7)) > C.distance(_comparison(ssim=0.9))


# --------------------------------------------------------------------------- latents, LPIPS


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(TINY / "vae")


def test_latent_distance_with_the_real_tiny_vae(tiny_vae):
    encode = C.make_vae_encoder(tiny_vae)
    a = _smooth_image(64, 64, seed=0)
    b = _smooth_image(64, 64, seed=5)
    assert C.latent_distance(a, a.copy(), encode=encode) == pytest.approx(0.0, abs=1e-9)
    near = C.latent_distance(a, _noisy(a, 4), encode=encode)
    far = C.latent_distance(a, b, encode=encode)
    assert 0.0 < near < far <= 2.0
    # Different sizes are aligned first instead of failing.
    bigger = np.asarray(Image.fromarray(a).resize((96, 96), Image.Resampling.BICUBIC))
    assert C.latent_distance(a, bigger, encode=encode) < far
    # The raw posterior mean works too (the plain lambda a caller may pass).
    raw = C.latent_distance(a, b, encode=lambda x: tiny_vae.encode(x).latent_dist.mean)
    assert raw > 0.0


def test_lpips_is_unavailable_without_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    available, reason = C.lpips_available()
    assert available is False
    assert "lpips" in reason.lower()
    img = _smooth_image(32, 32)
    assert C.lpips_distance(img, img) is None
    assert C.compare(img, img).lpips is None


# --------------------------------------------------------------------------- real renders


@pytest.fixture(scope="module")
def tiny_pipeline():
    import torch
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(TINY, dtype=torch.float32)


def _render(pipe, *, seed: int, cfg: float) -> np.ndarray:
    import torch

    image = pipe(
        prompt="a photo of a cat",
        width=64,
        height=64,
        num_inference_steps=6,
        guidance_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image.convert("RGB"))


def test_default_thresholds_separate_reproductions_from_changed_settings(
    tiny_pipeline, tiny_vae, tmp_path
):
    reference = _render(tiny_pipeline, seed=42, cfg=4.0)
    preview_path = _save(reference, tmp_path / "preview.jpg")  # as ai-toolkit saves
    preview = C.load_rgb(preview_path)
    codec = C.inspect_codec(preview_path)
    encode = C.make_vae_encoder(tiny_vae)
    thresholds = C.Thresholds()

    def score(render: np.ndarray) -> C.Comparison:
        return C.compare(preview, render, codec=codec, encode=encode)

    again = score(_render(tiny_pipeline, seed=42, cfg=4.0))
    assert thresholds.is_match(again)
    assert again.ssim > 0.999 and again.latent_distance < 1e-6
    assert thresholds.is_match(score(_noisy(reference, 1)))
    other_seed = score(_render(tiny_pipeline, seed=43, cfg=4.0))
    other_cfg = score(_render(tiny_pipeline, seed=42, cfg=4.5))
    for changed in (other_seed, other_cfg):
        assert not thresholds.is_match(changed)
        assert changed.ssim < thresholds.ssim_min
        assert changed.latent_distance > thresholds.latent_distance_max
    assert C.distance(again) < C.distance(other_cfg) < C.distance(other_seed)
