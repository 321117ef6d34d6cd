"""Tests for parity.compare: metrics, codec matching, image loading, thresholds.

The pixel metrics are checked against outside references: scikit-image's
``structural_similarity`` and ``peak_signal_noise_ratio`` with the settings every recorded
number was made with, on both of parity's paths (scikit-image on CPU, torchmetrics in
torch on a device, run here on CPU).
"""

from __future__ import annotations

import dataclasses
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parity import compare as C

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "aitk_real" / "tiny_zimage"
SAMPLES = ROOT / "fixtures" / "aitk_real" / "output" / "aitk_zimage" / "samples"

#: Agreement promised with scikit-image, for both paths.
AGREEMENT = 1e-4


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


def _near_white(height: int, width: int, seed: int) -> np.ndarray:
    """A flat 254/255 picture: the variances cancel badly here in float32 (5e-4 off)."""
    return _noisy(np.full((height, width, 3), 255, np.uint8), 1, seed=seed)


def _jpeg_round_trip(img: np.ndarray, **options) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", **options)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _save(img: np.ndarray, path: Path, **options) -> Path:
    Image.fromarray(img).save(path, **options)
    return path


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The reference: what every recorded SSIM meant (win_size only matters below 11 px)."""
    from skimage.metrics import structural_similarity

    win = min(11, *a.shape[:2])
    return float(
        structural_similarity(
            a,
            b,
            channel_axis=-1,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            win_size=win if win % 2 else win - 1,
        )
    )


def _skimage_psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(a, b, data_range=255))


def _pairs(height: int, width: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Test pairs of one size: noise, strong noise, JPEG loss, near-white flat areas."""
    img = _smooth_image(height, width)
    return [
        ("noise", img, _noisy(img, 20)),
        ("strong noise", img, _noisy(img, 90, seed=2)),
        ("jpeg", img, _jpeg_round_trip(_noisy(img, 5), quality=60)),
        ("near white", _near_white(height, width, 3), _near_white(height, width, 4)),
        ("unrelated", img, _smooth_image(height, width, seed=7)),
    ]


def _torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route compare_many's "device" path (torchmetrics) through the CPU, small batches."""
    monkeypatch.setattr("parity.compare.metrics._is_cpu", lambda device: False)
    monkeypatch.setattr("parity.compare.metrics._TORCH_CHUNK_PX", 2 * 80 * 112)  # several calls


# --------------------------------------------------------------------------- metrics


def test_identical_images_score_perfectly():
    img = _smooth_image(64, 80)
    assert C.ssim(img, img) == 1.0
    assert C.psnr(img, img) == math.inf
    result = C.compare(img, img.copy())
    assert result.ssim == 1.0
    assert result.psnr == C.PSNR_IDENTICAL_DB
    assert math.isfinite(result.psnr)
    assert result.ms_ssim is None
    assert result.resized is False
    assert (result.width_preview, result.height_preview) == (80, 64)
    assert C.distance(result) == 0.0
    assert C.Thresholds().is_match(result)


SIZES = [(64, 64), (80, 112), (112, 80), (200, 190), (11, 11)]
SMALL_SIZES = [(10, 12), (5, 9), (1, 1)]


@pytest.mark.parametrize("shape", SIZES + SMALL_SIZES)
def test_ssim_and_psnr_agree_with_scikit_image(shape):
    for name, a, b in _pairs(*shape):
        assert C.ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=AGREEMENT), name
        assert C.psnr(a, b) == pytest.approx(_skimage_psnr(a, b), abs=AGREEMENT), name


@pytest.mark.parametrize("shape", SIZES)
def test_torch_path_agrees_with_scikit_image(shape):
    pairs = _pairs(*shape)
    preview = pairs[0][1]
    renders = [b for _, a, b in pairs if a is preview] + [preview.copy()]
    ssims, psnrs = C._torch_ssim_psnr(preview, renders, device="cpu")
    assert len(ssims) == len(psnrs) == len(renders)
    for render, s, p in zip(renders[:-1], ssims, psnrs, strict=False):
        assert s == pytest.approx(_skimage_ssim(preview, render), abs=AGREEMENT)
        assert p == pytest.approx(_skimage_psnr(preview, render), abs=AGREEMENT)
    assert ssims[-1] == pytest.approx(1.0, abs=1e-12) and psnrs[-1] == math.inf
    # Near-white flat areas: where float32 would be 5e-4 off.
    a, b = _near_white(*shape, 3), _near_white(*shape, 4)
    (s,), (p,) = C._torch_ssim_psnr(a, [b], device="cpu")
    assert s == pytest.approx(_skimage_ssim(a, b), abs=AGREEMENT)
    assert p == pytest.approx(_skimage_psnr(a, b), abs=AGREEMENT)


@pytest.mark.parametrize("shape", SMALL_SIZES)
def test_small_images_fall_back_to_scikit_image_on_a_device(shape, monkeypatch):
    _torch_path(monkeypatch)
    for name, a, b in _pairs(*shape):
        (result,) = C.compare_many(a, [b], device="cuda")  # never reaches torch
        assert result.ssim == pytest.approx(_skimage_ssim(a, b), abs=AGREEMENT), name


def test_torch_path_needs_the_full_window():
    a = _smooth_image(10, 40)
    with pytest.raises(ValueError, match="11 px"):
        C._torch_ssim_psnr(a, [a], device="cpu")


def _codec_of(img: np.ndarray, path: Path) -> C.Codec:
    return C.inspect_codec(_save(img, path))


def _renders_for(preview_source: np.ndarray) -> list[np.ndarray]:
    """Counterfactual-like renders of a preview: exact, noisy, other, another size."""
    h, w = preview_source.shape[:2]
    bigger = Image.fromarray(_noisy(preview_source, 3)).resize((w + 16, h + 32))
    return [
        preview_source.copy(),
        _noisy(preview_source, 2),
        _noisy(preview_source, 40, seed=3),
        _smooth_image(h, w, seed=9),
        np.asarray(bigger),
    ]


def _assert_same_comparisons(got, expected, tol):
    """SSIM within ``tol``, PSNR within ``tol`` dB (1e-5 dB at least: torchmetrics takes
    the log of data_range in float32), every other field equal."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.ssim == pytest.approx(e.ssim, abs=tol)
        assert g.psnr == pytest.approx(e.psnr, abs=max(tol, 1e-5))
        others = ("ssim", "psnr")
        assert {k: v for k, v in dataclasses.asdict(g).items() if k not in others} == {
            k: v for k, v in dataclasses.asdict(e).items() if k not in others
        }


@pytest.mark.parametrize("path", ["scikit-image", "torch"])
def test_compare_many_equals_one_by_one(tmp_path, monkeypatch, path):
    source = _smooth_image(80, 112)
    codec = _codec_of(source, tmp_path / "preview.jpg")
    preview = C.load_rgb(tmp_path / "preview.jpg")
    renders = _renders_for(source)
    one_by_one = [C.compare(preview, r, codec=codec) for r in renders]  # scikit-image
    assert one_by_one[0].ssim == 1.0 and one_by_one[0].psnr == C.PSNR_IDENTICAL_DB
    assert [c.resized for c in one_by_one] == [False] * 4 + [True]
    assert (one_by_one[-1].width_render, one_by_one[-1].height_render) == (128, 112)
    if path == "torch":
        _torch_path(monkeypatch)
    batched = C.compare_many(preview, renders, codec=codec)
    _assert_same_comparisons(batched, one_by_one, 1e-12 if path == "scikit-image" else 1e-9)
    assert batched[0].psnr == C.PSNR_IDENTICAL_DB and all(c.codec_matched for c in batched)
    # A stacked array and a (CPU) tensor of the same renders give the same results.
    import torch

    same_size = renders[:4]
    stacked = C.compare_many(preview, np.stack(same_size), codec=codec)
    _assert_same_comparisons(stacked, one_by_one[:4], 1e-9)
    tensor = C.compare_many(preview, torch.from_numpy(np.stack(same_size)), codec=codec)
    _assert_same_comparisons(tensor, one_by_one[:4], 1e-9)
    assert C.compare_many(preview, [], codec=codec) == []


def test_compare_many_scores_on_the_renders_device(monkeypatch):
    import torch

    seen = []

    def recording(a, renders, *, device):
        seen.append(device)
        return [0.5] * len(renders), [30.0] * len(renders)

    monkeypatch.setattr("parity.compare.scores._ssim_psnr_many", recording)
    img = _smooth_image(32, 32)
    C.compare_many(img, [img, img])
    C.compare_many(img, torch.from_numpy(np.stack([img, img])))
    C.compare_many(img, [torch.from_numpy(img)])
    C.compare_many(img, [img], device="cuda:1")
    C.compare(img, img, device="cuda")
    assert seen == ["cpu", torch.device("cpu"), torch.device("cpu"), "cuda:1", "cuda"]
    assert C._is_cpu("cpu") and C._is_cpu(torch.device("cpu"))
    assert not C._is_cpu("cuda") and not C._is_cpu(torch.device("cuda", 1))


def test_compare_many_computes_the_preview_latent_once(tiny_vae):
    encode = C.make_vae_encoder(tiny_vae)
    calls = []

    def counting(x):
        calls.append(x.shape)
        return encode(x)

    preview = _smooth_image(64, 64)
    renders = [_noisy(preview, 4), _smooth_image(64, 64, seed=5)]
    batched = C.compare_many(preview, renders, encode=counting)
    assert len(calls) == 1 + len(renders)
    for comparison, render in zip(batched, renders, strict=True):
        expected = C.latent_distance(preview, render, encode=encode)
        assert comparison.latent_distance == pytest.approx(expected, abs=1e-12)
    assert 0.0 < batched[0].latent_distance < batched[1].latent_distance


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA device (float64 there)"
)
def test_compare_many_on_cuda_agrees_with_scikit_image(tmp_path):
    import torch

    source = _smooth_image(80, 112)
    codec = _codec_of(source, tmp_path / "preview.jpg")
    preview = C.load_rgb(tmp_path / "preview.jpg")
    renders = _renders_for(source)[:4] + [_near_white(80, 112, 4)]
    on_gpu = torch.from_numpy(np.stack(renders)).cuda()  # the device is taken from here
    batched = C.compare_many(preview, on_gpu, codec=codec)
    _assert_same_comparisons(
        batched, [C.compare(preview, r, codec=codec) for r in renders], AGREEMENT
    )


def test_ms_ssim_is_not_computed():
    img = _smooth_image(256, 256)
    assert C.compare(img, _noisy(img, 10)).ms_ssim is None
    assert not hasattr(C, "ms_ssim")
    field = {f.name: f for f in dataclasses.fields(C.Comparison)}["ms_ssim"]
    assert field.type == "float | None"


def test_metrics_fall_as_noise_grows():
    img = _smooth_image(96, 96)
    light, heavy = _noisy(img, 3), _noisy(img, 40)
    assert 1.0 > C.ssim(img, light) > C.ssim(img, heavy)
    assert C.psnr(img, light) > C.psnr(img, heavy)


def test_psnr_in_decibels():
    img = np.full((8, 8, 3), 100, dtype=np.uint8)
    brighter = img + np.uint8(10)  # every value off by 10 -> MSE 100
    assert C.psnr(img, brighter) == pytest.approx(10 * math.log10(255**2 / 100))
    (psnr,) = C._torch_ssim_psnr(
        np.full((16, 16, 3), 100, np.uint8), [np.full((16, 16, 3), 110, np.uint8)], device="cpu"
    )[1]
    assert psnr == pytest.approx(10 * math.log10(255**2 / 100), abs=AGREEMENT)


def test_metrics_reject_mismatched_or_wrong_arrays():
    a = _smooth_image(16, 16)
    with pytest.raises(ValueError, match="differ in size"):
        C.ssim(a, _smooth_image(16, 17))
    with pytest.raises(ValueError, match="uint8"):
        C.psnr(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        C.compare_many(a, [a.astype(np.float32)])


def test_importing_compare_loads_no_heavy_library():
    code = (
        "import sys, parity.compare\n"
        "print(sorted({'torch', 'torchmetrics', 'skimage', 'scipy'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


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


def _pillow_default_qtables() -> tuple[tuple[int, ...], ...]:
    """The quantization tables Pillow writes by default (quality 75)."""
    buffer = io.BytesIO()
    Image.fromarray(_smooth_image(16, 16)).save(buffer, format="JPEG")
    buffer.seek(0)
    with Image.open(buffer) as im:
        return tuple(tuple(im.quantization[k]) for k in sorted(im.quantization))


def test_pillow_default_jpeg_is_read_as_its_tables_and_420(tmp_path):
    path = _save(_smooth_image(64, 64), tmp_path / "default.jpg")
    codec = C.inspect_codec(path)
    assert codec.format == "JPEG" and codec.mode == "RGB"
    assert codec.subsampling == "4:2:0"
    assert codec.qtables == _pillow_default_qtables()
    assert len(codec.qtables) == 2 and all(len(t) == 64 for t in codec.qtables)
    assert not codec.lossless
    assert not hasattr(codec, "quality") and not hasattr(codec, "quality_exact")


@pytest.mark.parametrize(
    ("quality", "subsampling", "name"),
    [(95, 0, "4:4:4"), (90, 1, "4:2:2"), (50, 2, "4:2:0"), (20, 0, "4:4:4"), (3, 2, "4:2:0")],
)
def test_jpeg_tables_and_subsampling_are_reproduced(tmp_path, quality, subsampling, name):
    render = _noisy(_smooth_image(48, 64), 10)
    path = _save(render, tmp_path / f"q{quality}.jpg", quality=quality, subsampling=subsampling)
    codec = C.inspect_codec(path)
    assert codec.subsampling == name
    assert codec.qtables != _pillow_default_qtables()
    # The file's own tables and subsampling: re-encoding gives the file's pixels exactly.
    assert np.array_equal(C.encode_like(render, codec), C.load_rgb(path))


def test_jpeg_without_tables_uses_pillow_default_quality(tmp_path):
    render = _noisy(_smooth_image(48, 64), 10)
    default = C.load_rgb(_save(render, tmp_path / "default.jpg"))
    q95 = C.inspect_codec(_save(render, tmp_path / "q95.jpg", quality=95, subsampling=2))
    no_tables = dataclasses.replace(q95, qtables=None)
    assert np.array_equal(C.encode_like(render, no_tables), default)
    assert not np.array_equal(C.encode_like(render, q95), default)


def test_grayscale_jpeg_is_encoded_as_grayscale(tmp_path):
    gray = _smooth_image(40, 56)[..., 0]
    path = _save(gray, tmp_path / "gray.jpg")
    codec = C.inspect_codec(path)
    assert codec.mode == "L" and codec.subsampling is None and len(codec.qtables) == 1
    rgb = np.repeat(gray[..., np.newaxis], 3, axis=2)
    again = C.encode_like(rgb, codec)
    assert np.array_equal(again, C.load_rgb(path))
    assert np.array_equal(again[..., 0], again[..., 2])


def test_png_is_lossless(tmp_path):
    img = _smooth_image(20, 30)
    codec = C.inspect_codec(_save(img, tmp_path / "x.png"))
    assert codec.format == "PNG" and codec.lossless and codec.qtables is None
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
    again = C.encode_like(img, codec)
    assert floor["ssim"] == pytest.approx(_skimage_ssim(img, again), abs=AGREEMENT)
    assert floor["psnr"] == pytest.approx(_skimage_psnr(img, again), abs=AGREEMENT)
    assert 0.0 < floor["ssim"] < 1.0
    assert 0.0 < floor["psnr"] < C.PSNR_IDENTICAL_DB
    q95 = C.inspect_codec(_save(img, tmp_path / "q95.jpg", quality=95, subsampling=0))
    better = C.jpeg_floor(img, q95)
    assert floor["ssim"] < better["ssim"] < 1.0


def test_real_ai_toolkit_previews_are_pillow_defaults():
    previews = sorted(SAMPLES.glob("*.jpg"))
    assert len(previews) == 15
    for path in previews:
        codec = C.inspect_codec(path)
        assert (codec.format, codec.subsampling) == ("JPEG", "4:2:0"), path
        assert codec.qtables == _pillow_default_qtables(), path


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
        ms_ssim=None,
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


@pytest.mark.skipif(
    not C.lpips_available()[0],
    reason=f"LPIPS needs the optional `lpips` extra and its backbone weights in the torch "
    f"hub cache: {C.lpips_available()[1]}",
)
def test_lpips_orders_renders_when_its_weights_are_present():
    """With the package and weights at hand, LPIPS is 0 for identical images and grows
    with the difference (the reference implementation is the lpips package itself)."""
    a = _smooth_image(64, 64)
    assert C.lpips_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    near, far = C.lpips_distance(a, _noisy(a, 4)), C.lpips_distance(a, _noisy(a, 60))
    assert 0.0 < near < far
    assert C.compare(a, _noisy(a, 4)).lpips == pytest.approx(near)


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


def test_measured_floor_sets_the_bf16_tolerance():
    """bf16 images made elsewhere are judged against k times their own measured floor:
    wider for a noisy setting, narrower for a quiet one, never below the float32 rule."""
    from parity.compare import NOISE_FLOOR_K, NoiseFloor, measure_floor, same_within_noise

    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, size=(32, 32, 3)).astype(np.uint8)
    shifted = base.copy()
    shifted[:4, :4] += 9  # 9 levels somewhere: another machine's kernels, say
    quiet = measure_floor(base, base, method="test", dtype="bfloat16")
    noisy = measure_floor(base, shifted, method="test", dtype="bfloat16")
    assert (quiet.max_abs_diff, noisy.max_abs_diff) == (0, 9)
    at_quiet = same_within_noise(base, shifted, dtype="bfloat16", floor=quiet)
    at_noisy = same_within_noise(base, shifted, dtype="bfloat16", floor=noisy)
    assert at_quiet.limit == 1  # the float32 rule is the least tolerance
    assert at_noisy.limit == math.floor(NOISE_FLOOR_K * 9)
    assert at_noisy.same and not at_quiet.same
    far = base.copy()
    far[:4, :4] += 40  # a real change: beyond k times the floor
    assert not same_within_noise(base, far, dtype="bfloat16", floor=noisy).same
    assert NoiseFloor.from_json(noisy.to_json()) == noisy
