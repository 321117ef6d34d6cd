"""Repository-level pytest configuration: tests run on CPU and never reach a model hub."""

import os

# Set before any Hugging Face library is imported, so nothing can try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tiny models render fastest on one thread; several threads per pytest worker
# oversubscribe the cores and slow renders down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


# ------------------------------------------------------------------ float-noise report
# Tests that compare fresh renders with images made elsewhere (committed fixtures, real
# ai-toolkit previews) use parity's float-noise rule, parity.compare.same_within_noise,
# and report here how much was bit-exact on this machine. A bf16/fp16 image is judged
# against the noise floor measured for its own settings in the same test (no constant
# tolerance holds on every CPU): see FloatNoiseRecorder.floor.

import pytest  # noqa: E402

_NOISE_LINES: list[str] = []


class FloatNoiseRecorder:
    """Collects NoiseChecks of one test and asserts each is within float noise."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.checks: list = []
        self.floors: list = []

    def check(
        self,
        name: str,
        reference,
        render,
        *,
        codec=None,
        dtype="float32",
        floor=None,
        frame_duration=None,
    ):
        """``reference`` and ``render``: images, or a video's frames (sequences), then
        encoded at ``frame_duration`` ms a frame when ``codec`` is an animated WebP's."""
        from parity.compare import same_within_noise

        # bf16/fp16 noise depends on the image: such an image made elsewhere is judged
        # against the floor measured for its own setting here, never a constant.
        assert floor is not None or dtype == "float32", f"{name}: {dtype} needs its floor"
        result = same_within_noise(
            reference, render, codec=codec, dtype=dtype, floor=floor, frame_duration=frame_duration
        )
        self.checks.append(result)
        assert result.same, f"{name}: {result}"
        return result

    def floor(self, settings, render, *, base_model, codec=None):
        """The noise floor of ``render`` (an image, or a video's frames), which this
        process rendered from ``settings`` (a RenderSettings or its dict, e.g. from parity
        preview's effective.json): the same settings rendered once more through the
        alternate kernel path here, scored with ``codec`` (the stored preview's) when
        given."""
        import numpy as np

        from parity.compare import frame_ms, measure_floor
        from parity.render.engine import alternate_method
        from parity.settings import RenderSettings
        from parity.testing.jobs import shared_engine

        if isinstance(settings, dict):
            settings = RenderSettings.from_dict(settings)
        engine = shared_engine(base_model, family=settings.family)
        alternate = engine.render(settings, alternate=True).frames_rgb
        still = not isinstance(render, list | tuple) and np.asarray(render).ndim == 3
        floor = measure_floor(
            render,
            alternate[0] if still else alternate,
            codec=codec,
            method=alternate_method("cpu"),
            dtype=settings.dtype,
            frame_duration=frame_ms(settings.fps) if len(alternate) > 1 else None,
        )
        self.floors.append(floor)
        return floor

    def check_job_previews(self, job, previews, *, dtype="float32") -> int:
        """Check every committed preview of ``job`` (``samples/*.jpg``, and its
        ``lossless_previews/<name>.png`` before JPEG) against ``previews/<step>/<i>.png``
        as ``parity preview`` writes them; returns how many were checked."""
        from parity.compare import inspect_codec, load_rgb

        committed = sorted((job / "samples").glob("*.jpg"))
        for path in committed:
            step, index = path.stem.split("__")[1].split("_")
            render = load_rgb(previews / str(int(step)) / f"{index}.png")
            lossless = job / "lossless_previews" / f"{path.stem}.png"
            if lossless.is_file():
                self.check(f"{path.name} before JPEG", load_rgb(lossless), render, dtype=dtype)
            self.check(path.name, load_rgb(path), render, codec=inspect_codec(path), dtype=dtype)
        return len(committed)

    def summary(self) -> str:
        exact = sum(c.max_abs_diff == 0 for c in self.checks)
        values = sum(c.exact_share for c in self.checks) / max(1, len(self.checks))
        worst = max((c.max_abs_diff for c in self.checks), default=0)
        floors = ""
        if self.floors:
            low = min(f.max_abs_diff for f in self.floors)
            high = max(f.max_abs_diff for f in self.floors)
            floors = f", noise floors {low}-{high}/255 (k = {_k():g})"
        return (
            f"{self.node_id}: {exact}/{len(self.checks)} images bit-exact, "
            f"{values:.2%} of values identical, max difference {worst}/255{floors}"
        )


def _k() -> float:
    from parity.compare import NOISE_FLOOR_K

    return NOISE_FLOOR_K


@pytest.fixture
def float_noise(request):
    """Compare images made elsewhere with parity's float-noise rule; reported at the end."""
    recorder = FloatNoiseRecorder(request.node.nodeid)
    yield recorder
    if recorder.checks:
        request.node.user_properties.append(("float_noise", recorder.summary()))


def pytest_runtest_logreport(report):
    # Runs in the controlling process under pytest-xdist too, so workers' lines arrive.
    if report.when == "teardown":
        _NOISE_LINES.extend(v for k, v in report.user_properties if k == "float_noise")


def pytest_terminal_summary(terminalreporter):
    if _NOISE_LINES:
        terminalreporter.section("float noise (images made elsewhere vs renders here)")
        for line in sorted(_NOISE_LINES):
            terminalreporter.write_line(line)
