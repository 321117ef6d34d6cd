"""pytest plugin: one test per training preview of an ai-toolkit job.

``pytest --parity-job=output/my_lora`` collects one item per preview, named
``<job name>::step<N>::<index>``. The first item of a job runs the whole job through
:func:`parity.run.run_job` (once per process); every item then looks up its own result
row and passes when the row's verdict is ``match``. The plugin only collects, calls the
library and reports: comparison, attribution and the HTML report live in the library.

Options come from parity's one option table (:data:`parity.options.OPTIONS`, the same
the command line is made from); each is read by one function, :func:`setting`, with
parity's one precedence (:func:`parity.options.resolve`), highest first:

1. the command line (``--parity-ssim-min`` ...),
2. the job's own ``parity.toml`` (options marked ``per_job``: ``ssim_min``,
   ``psnr_min``, ``latent_distance_max``, ``device``),
3. the pytest ini file (``parity_ssim_min`` ...),
4. the environment (``PARITY_SSIM_MIN`` ...),
5. ``[tool.parity]`` of the rootdir's ``pyproject.toml``, when there is one,
6. the option's default.

``--parity-request`` files apply to the job whose checkpoint their ``loras[0].path``
names (under ``--parity-lora-root``, default each job's training folder): that job's
previews of that step are compared with the request's prompts instead of the
as-configured request.

A session without ``--parity-job`` (or ``parity_jobs`` in the ini file) is left alone:
no markers, no state, nothing read, until a test asks for one of the fixtures.

With pytest-xdist, the items of a job must run on one worker (the job is rendered once
per process). Item ids start with the job name, so ``--dist loadfile`` keeps a job
together; the plugin picks ``loadfile`` itself when ``-n`` is given without ``--dist``.
With several GPUs, worker ``gwN`` renders on ``cuda:(N mod count)`` when the device is
``cuda`` or not set (:func:`xdist_device`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

#: A reference render counts as unchanged from its baseline when SSIM >= this.
DRIFT_SSIM_MIN = 0.999

#: File in a job folder with per-job settings.
JOB_FILE = "parity.toml"

#: Properties recorded per item (junit XML ``<property>`` elements).
METRIC_PROPERTIES = ("ssim", "psnr", "latent_distance")


def pytest_addoption(parser: pytest.Parser) -> None:
    from parity.options import plugin_options

    group = parser.getgroup("parity", "preview parity of ai-toolkit jobs")
    for opt in plugin_options():
        kwargs: dict[str, Any] = {"dest": opt.ini_name, "help": opt.help, "default": None}
        if opt.kind == "bool":
            kwargs["action"] = "store_true"
        else:
            action = "append" if opt.is_list else "store"
            kwargs.update(action=action, metavar=opt.metavar)
        group.addoption(opt.plugin_flag, **kwargs)
        ini_type = "linelist" if opt.is_list else "bool" if opt.kind == "bool" else "string"
        parser.addini(
            opt.ini_name, f"{opt.help} (like {opt.plugin_flag})", type=ini_type, default=None
        )


def _layers(config: pytest.Config, job: JobSettings | None) -> list[Any]:
    """The sources of option values for ``job`` (None: the session's), highest first."""
    from parity.options import BY_NAME, Layer, plugin_options, standard_layers

    flags = Layer(
        "the command line",
        {o.name: config.getoption(o.ini_name, None) for o in plugin_options()},
        Path(config.invocation_params.dir),
    )
    between = []
    if job is not None:
        per_job = frozenset(o.name for o in BY_NAME.values() if o.per_job)
        between.append(Layer(str(job.folder / JOB_FILE), job.values, job.folder, per_job))
    ini_base = config.inipath.parent if config.inipath else config.rootpath
    between.append(
        Layer(
            "the pytest ini file",
            {o.name: config.getini(o.ini_name) for o in plugin_options()},
            ini_base,
        )
    )
    return standard_layers(flags, *between, pyproject=config.rootpath / "pyproject.toml")


def settings(config: pytest.Config, job: JobSettings | None = None) -> dict[str, Any]:
    """Every plugin option's value for ``job`` (None: the session's), resolved once per
    process and job (the sources do not change during a session)."""
    cache = config.stash.setdefault(_SETTINGS_KEY, {})
    key = None if job is None else job.folder
    if key not in cache:
        cache[key] = _resolve_settings(config, job)
    return dict(cache[key])


_SETTINGS_KEY = pytest.StashKey[dict[Any, dict[str, Any]]]()


def _resolve_settings(config: pytest.Config, job: JobSettings | None) -> dict[str, Any]:
    from parity.errors import ParityError
    from parity.options import plugin_options, resolve

    try:
        values = resolve(_layers(config, job), [o.name for o in plugin_options()])
    except ParityError as e:
        raise pytest.UsageError(f"parity: {e}") from None
    for opt in plugin_options():  # the plugin works with Path objects
        value = values[opt.name]
        if opt.kind == "path" and value is not None:
            values[opt.name] = Path(value)
        elif opt.kind == "paths" and value:
            values[opt.name] = [Path(v) for v in value]
    return values


def setting(config: pytest.Config, name: str, job: JobSettings | None = None) -> Any:
    """The value of option ``name``, with the precedence of the module docstring."""
    return settings(config, job)[name]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise pytest.UsageError(f"{path}: cannot read: {e}") from None


@dataclass(frozen=True)
class JobSettings:
    """A job folder's ``parity.toml``: the ``per_job`` options it sets."""

    folder: Path
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> JobSettings:
        path = folder / JOB_FILE
        if not path.is_file():
            return cls(folder)
        from parity.options import OPTIONS

        values = _read_toml(path)
        known = sorted(o.name for o in OPTIONS if o.per_job)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise pytest.UsageError(
                f"{path}: unknown key(s) {unknown}; known keys: {', '.join(known)}"
            )
        return cls(folder, values)


def run_options(config: pytest.Config, job: JobSettings | None = None, **fixed: Any) -> Any:
    """The :class:`parity.run.RunOptions` of ``job`` (None: the session's), built as the
    command line builds its own (:func:`parity.options.run_options`)."""
    from parity.errors import ParityError
    from parity.options import run_options as build

    values = settings(config, job)
    try:
        return build(values, progress=False, **fixed)
    except ParityError as e:
        raise pytest.UsageError(f"parity: {e}") from None


def thresholds(config: pytest.Config, job: JobSettings | None = None) -> Any:
    """:class:`parity.compare.Thresholds` for ``job`` (None: the session's)."""
    return run_options(config, job).thresholds


# ------------------------------------------------------------------------ devices


def cuda_device_count() -> int:
    """CUDA devices torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def xdist_device(worker: str, device: str | None, cuda_count: int) -> str | None:
    """The device of pytest-xdist worker ``worker`` when several GPUs are present.

    Parameters
    ----------
    worker:
        The xdist worker id (``"gw0"``, ``"gw1"``...) or ``"main"`` without xdist.
    device:
        The configured device: None (unset), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
    cuda_count:
        Number of CUDA devices.

    Returns
    -------
    str or None
        ``"cuda:<N mod cuda_count>"`` for worker ``gwN`` when ``device`` is None or
        ``"cuda"`` and there are at least two CUDA devices; otherwise ``device``
        unchanged (an explicit ``cuda:N`` or ``cpu`` always wins).
    """
    if device not in (None, "cuda") or cuda_count < 2:
        return device
    match = re.fullmatch(r"gw(\d+)", worker)
    if match is None:
        return device
    return f"cuda:{int(match.group(1)) % cuda_count}"


# --------------------------------------------------------------------- the plugin


@dataclass
class _JobRun:
    """The result of running one job in this process."""

    out_dir: Path | None = None
    rows: dict[tuple[int, int], Any] = field(default_factory=dict)
    error: str | None = None
    device: str | None = None


class ParityFailure(Exception):
    """An item's preview (or its baseline) does not match; the message says why."""


class ParityPlugin:
    """State of the plugin for one pytest process (controller or worker)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self.engines: dict[tuple[str, str], Any] = {}
        self.runs: dict[str, _JobRun] = {}
        # nodeid -> (job, status, run folder, worker): filled from reports, so that the
        # xdist controller sees every worker's items.
        self.outcomes: dict[str, tuple[str, str, str, str]] = {}

    def bind_requests(self, jobs: list[Any], *, all_collected: bool) -> dict[str, list[Any]]:
        """The --parity-request files bound to the jobs whose checkpoints they name
        (:func:`parity.plan.bind_requests`, as every front door binds them). With a job
        that failed to collect (``all_collected`` False), a request that names none of
        the others may be that job's: it is left out, the job reports its own error."""
        from parity.errors import ParityError, UnboundRequestError
        from parity.plan import bind_requests

        values = settings(self.config)
        requests = [Path(p) for p in values["request"] or []]
        try:
            return bind_requests(
                jobs,
                requests,
                served=[Path(p) for p in values["served"] or []],
                lora_root=Path(values["lora_root"]) if values["lora_root"] else None,
                allow_outside_paths=values["allow_outside_paths"],
                jobs_label="the collected jobs",
            )
        except UnboundRequestError as e:
            if not all_collected:
                return {}
            raise pytest.UsageError(f"parity: {e}") from None
        except ParityError as e:
            raise pytest.UsageError(f"parity: {e}") from None

    def device(self, configured: str | None) -> str:
        """The device this process renders on: ``configured`` (the option or the job's
        parity.toml), spread over the GPUs by :func:`xdist_device` under xdist, else
        CUDA when available."""
        from parity.render.engine import default_device

        return xdist_device(self.worker, configured, cuda_device_count()) or default_device()

    def engine(self, source: Any, device: str | None, job: Any = None) -> Any:
        """One RenderEngine per (model, device, job family) for the whole process; a
        job's is opened as every front door opens it
        (:func:`parity.run.open_job.open_engine`)."""
        from parity.render.engine import RenderEngine
        from parity.run.open_job import open_engine

        device = self.device(device)
        if isinstance(source, (str, Path)) and Path(source).exists():
            source = str(Path(source).resolve())
        key = (repr(source), device, job.family if job is not None else None)
        if key not in self.engines:
            threads = setting(self.config, "threads")
            if threads:  # --parity-threads, as --threads does for the command line
                import torch

                torch.set_num_threads(threads)
            if job is None:  # the parity_engine fixture: the checkpoint's family
                self.engines[key] = RenderEngine(source, device=device)
            else:
                self.engines[key] = open_engine(job, source, device=device)
        return self.engines[key]

    def run(self, node: ParityJob) -> _JobRun:
        """Run ``node``'s job once per process and keep its rows."""
        if node.job.name in self.runs:
            return self.runs[node.job.name]
        result = _JobRun()
        self.runs[node.job.name] = result
        from parity.errors import ModelError
        from parity.run import run_job

        config, job = self.config, node.job
        session_items = getattr(node.session, "items", None) or []
        # Only the steps of the items still selected (after -k, deselection...).
        steps = sorted(
            {i.step for i in session_items if isinstance(i, ParityItem) and i.parent is node}
        ) or list(node.steps)
        try:
            source = node.opened.source
            if source is None:
                raise ModelError(node.opened.model_problem)
            device = self.device(node.device)
            result.device = device
            engine = self.engine(source, device, job)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            results = setting(config, "results") or config.rootpath / "reports" / "pytest"
            out_dir = results / job.name / f"{self.worker}-{stamp}"
            result.out_dir = out_dir
            generate = setting(config, "generate")
            options = run_options(
                config,
                node.settings,
                steps=tuple(steps),
                attribute=not setting(config, "no_attribution") and not generate,
            )
            # Items deselected (-k...) leave their steps out, and the requests of those steps.
            requests = [u for u in node.requests if u.step in steps]
            summary = run_job(job, engine, out_dir, options, device=device, requests=requests)
        except Exception as e:  # every item of the job reports it
            result.error = (
                f"parity could not run job {job.name} ({job.root}): {type(e).__name__}: {e}"
            )
            return result
        result.rows = {(r.step, r.index): r for r in summary.rows}
        return result

    def baseline_path(self, node: ParityJob, step: int, index: int, suffix: str = ".png") -> Path:
        """Where a preview's reference render is kept as its baseline; ``suffix`` is the
        render's (``.png``, or ``.webp`` for a video's animated WebP)."""
        root = setting(self.config, "baseline_dir") or (node.job.root / "parity-baseline")
        return root / node.job.name / f"step{step}" / f"{index}{suffix}"

    # ---- hooks

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        seen: set[str] = set()
        nodes = []
        for path in setting(config, "job") or []:
            node = ParityJob.for_path(session, path)
            if node.name in seen:
                raise pytest.UsageError(
                    f"{path}: a job named {node.name!r} is already collected; job names must differ"
                )
            seen.add(node.name)
            nodes.append(node)
        loaded = [n for n in nodes if n.opened is not None]
        bound = _plugin(config).bind_requests(
            [n.opened.job for n in loaded], all_collected=len(loaded) == len(nodes)
        )
        for node in nodes:
            node.requests = tuple(bound.get(node.name, ()))
            items.extend(session.genitems(node))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        job = props.get("parity_job")
        if job is None:
            return
        status = None
        if report.when == "call":
            status = props.get("status") or ("error" if report.failed else "passed")
        elif report.skipped and report.when == "setup":
            status = "skipped"
        elif report.failed and report.when == "setup":
            status = "error"
        if status is not None:
            self.outcomes[report.nodeid] = (
                str(job),
                str(status),
                str(props.get("run_dir", "")),
                str(props.get("worker", "")),
            )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput") or not self.outcomes:
            return
        tr = terminalreporter
        tr.section("parity")
        jobs: dict[str, dict[str, Any]] = {}
        for job, status, run_dir, worker in self.outcomes.values():
            entry = jobs.setdefault(job, {"counts": {}, "runs": set(), "workers": set()})
            entry["counts"][status] = entry["counts"].get(status, 0) + 1
            if run_dir:
                entry["runs"].add(run_dir)
            if worker:
                entry["workers"].add(worker)
        order = ("match", "mismatch", "error", "drift", "generated", "skipped", "passed")
        for job, entry in sorted(jobs.items()):
            counts = entry["counts"]
            keys = [k for k in order if k in counts] + sorted(set(counts) - set(order))
            text = ", ".join(f"{counts[k]} {k}" for k in keys)
            total = sum(counts.values())
            tr.write_line(f"{job}: {text} ({total} previews)")
            for run_dir in sorted(entry["runs"]):
                tr.write_line(f"  run: {run_dir}")
                report = Path(run_dir) / "report.html"
                if report.exists():
                    tr.write_line(f"  report: {report}")


# ---------------------------------------------------------------------- collection


class ParityJob(pytest.Collector):
    """One ai-toolkit job folder; its children are one item per preview."""

    opened: Any = None  # parity.run.open_job.OpenedJob
    job_error: Exception | None = None
    #: The user's requests that name this job's checkpoints, and their LoRA root.
    requests: tuple[Any, ...] = ()

    @classmethod
    def for_path(cls, session: pytest.Session, path: Path) -> ParityJob:
        from parity.model_map import ModelMap
        from parity.run.open_job import open_job

        opened, error = None, None
        values = settings(session.config)
        try:
            # As every front door opens a job: the model map of the options, the
            # environment and pyproject.toml (when there is one); a model that cannot be
            # resolved fails the job's items when they run, not the collection.
            model_map = ModelMap.load(
                values["model_map"] or [], pyproject=session.config.rootpath / "pyproject.toml"
            )
            opened = open_job(
                path,
                model_map,
                base_model=values["base_model"],
                reference_model=values["reference_model"],
                model_required=False,
            )
            name = opened.job.name
        except Exception as e:  # reported as this job's collection error
            name, error = path.name, e
        node = cls.from_parent(session, name=name, nodeid=name, path=path)
        node.opened, node.job_error = opened, error
        return node

    @property
    def job(self) -> Any:
        return self.opened.job if self.opened is not None else None

    def collect(self) -> list[ParityItem]:
        from parity.plan import parse_steps, select_steps, steps_with_requests

        if self.job_error is not None:
            raise self.job_error
        self.settings = JobSettings.read(self.path)
        self.thresholds = thresholds(self.config, self.settings)
        self.device = setting(self.config, "device", self.settings)
        if self.requests:  # unusable pairings are this job's collection error
            from parity.plan import plan_requests

            plan_requests(self.job, self.requests, setting(self.config, "match"))
        wanted = setting(self.config, "steps")
        # A request naming a step --parity-steps leaves out is this job's collection error.
        wanted = steps_with_requests(self.job, wanted, self.requests, given=wanted is not None)
        steps = select_steps(self.job, parse_steps(wanted or "all"))
        self.steps = tuple(steps)
        keys = sorted({(p.step, p.index) for p in self.job.previews if p.step in steps})
        return [
            ParityItem.from_parent(self, name=f"step{step}::{index}", step=step, index=index)
            for step, index in keys
        ]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        from parity.errors import ParityError

        if isinstance(excinfo.value, (ParityError, ValueError, OSError, pytest.UsageError)):
            text = str(excinfo.value)
            return f"parity: {text}" if str(self.path) in text else f"parity: {self.path}: {text}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class ParityItem(pytest.Item):
    """One preview: passes when parity's verdict for it is ``match``."""

    def __init__(self, *, step: int, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.index = index
        job = self.parent
        assert isinstance(job, ParityJob)
        self.add_marker(pytest.mark.parity)
        self.add_marker(pytest.mark.xdist_group(name=job.name))
        if job.device and str(job.device).startswith("cuda"):
            self.add_marker(pytest.mark.gpu)
        self.user_properties.extend([("parity_job", job.name), ("step", step), ("index", index)])

    @property
    def job_node(self) -> ParityJob:
        assert isinstance(self.parent, ParityJob)
        return self.parent

    def setup(self) -> None:
        device = self.job_node.device
        if device and str(device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                pytest.skip(f"parity job {self.job_node.name} needs {device}; CUDA is unavailable")

    def runtest(self) -> None:
        plugin = _plugin(self.config)
        node = self.job_node
        run = plugin.run(node)
        props = self.user_properties
        props.append(("worker", plugin.worker))
        if run.device is not None:
            props.append(("device", run.device))
        if run.out_dir is not None:
            props.append(("run_dir", str(run.out_dir.resolve())))
        if run.error:
            props.append(("status", "error"))
            raise ParityFailure(run.error)
        row = run.rows.get((self.step, self.index))
        if row is None:
            props.append(("status", "error"))
            raise ParityFailure(
                f"{node.name}: no result row for step {self.step} index {self.index}"
            )
        for name in METRIC_PROPERTIES:
            value = getattr(row, name)
            if value is not None:
                props.append((name, f"{value:.6g}"))
        props.extend(
            [
                ("verdict", str(row.verdict)),
                ("causes", ";".join(map(str, row.causes))),
                ("explained", str(row.explained).lower()),
                (
                    "below_noise_floor",
                    ";".join(sorted(str(u.cause) for u in row.below_noise_floor)),
                ),
            ]
        )
        assert run.out_dir is not None
        out_dir = run.out_dir.resolve()
        if row.verdict == "error" or row.render is None:
            props.append(("status", "error"))
            raise ParityFailure(_describe(node, row, out_dir, run_thresholds=node.thresholds))
        render = out_dir / row.render
        baseline = plugin.baseline_path(node, self.step, self.index, render.suffix)
        if setting(self.config, "generate"):
            baseline.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(render, baseline)
            props.extend([("status", "generated"), ("baseline", str(baseline))])
            return
        problems = []
        if row.verdict != "match":
            problems.append(_describe(node, row, out_dir, run_thresholds=node.thresholds))
        if baseline.is_file():
            drift = _drift(baseline, render)
            if drift is not None:
                ssim, where = drift
                props.append(("drift_ssim", f"{ssim:.6g}"))
                problems.append(
                    f"reference drift: the reference render of {node.name} step {self.step} "
                    f"preview {self.index} changed since its baseline was recorded "
                    f"(SSIM {ssim:.4f} < {DRIFT_SSIM_MIN}{where})\n"
                    f"  baseline: {baseline}\n  render:   {render}\n"
                    "  (re-record with --parity-generate once the change is accepted)"
                )
        status = row.verdict if row.verdict != "match" else ("drift" if problems else "match")
        props.append(("status", str(status)))
        if problems:
            raise ParityFailure("\n".join(problems))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ParityFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.job_node.job.config_path, None, self.nodeid


def _drift(baseline: Path, render: Path) -> tuple[float, str] | None:
    """The render against its baseline, when it drifted: (SSIM, where), else None.

    A video is compared frame by frame and its SSIM is the worst frame's, ``where``
    naming it (``", worst frame 5 of 9"``, counted from 1); ``where`` is "" for an image.
    Renders of other sizes, frame counts or frame rates drift with SSIM -1 and ``where``
    saying how they differ.
    """
    from parity import compare
    from parity.report.text import playback

    a, b = compare.load_clip(baseline), compare.load_clip(render)
    if (len(a), a.frame_ms) != (len(b), b.frame_ms):
        was, now = playback(len(a), a.frame_ms), playback(len(b), b.frame_ms)
        return -1.0, f"; the baseline has {was}, the render {now}"
    if a.frames[0].shape != b.frames[0].shape:
        return -1.0, "; the sizes differ"
    ssims = [compare.compare(x, y).ssim for x, y in zip(a.frames, b.frames, strict=True)]
    worst = min(range(len(ssims)), key=ssims.__getitem__)
    if ssims[worst] >= DRIFT_SSIM_MIN:
        return None
    where = f", worst frame {worst + 1} of {len(ssims)}" if a.animated else ""
    return ssims[worst], where


def _reference_limits(thresholds: Any, row: Any) -> Any:
    """The limits the reference render was judged with: the thresholds, widened by the
    row's noise floor where it was measured on that render."""
    from parity.compare import widened

    floor = row.noise_floor
    if floor is None or floor.render != "reference":
        return thresholds
    limits = widened(thresholds.rule, floor)
    return type(thresholds)(limits.ssim_min, limits.psnr_min, limits.latent_distance_max)


def _video_lines(video: Any) -> list[str]:
    """What a video row's failure adds: its worst frame and means (the metric lines
    above are each the worst over the frames) and how the two videos play, where that
    differs."""
    from parity.report.text import frame_text, playback_text

    lines = [f"video: {frame_text(video)} (SSIM, PSNR, latent above: each metric's worst frame)"]
    differs = playback_text(video)
    if differs is not None:
        lines.append(f"plays differently: {differs}")
    return lines


def _describe(node: ParityJob, row: Any, out_dir: Path, *, run_thresholds: Any) -> str:
    """The failure message of a mismatch or error row."""
    t = run_thresholds
    lines = [f"{node.name} step {row.step} preview {row.index}: {str(row.verdict).upper()}"]
    if row.verdict == "mismatch":
        causes = ", ".join(map(str, row.causes)) or "none confirmed"
        state = (
            "explained (switching these causes reproduces the preview)"
            if row.explained
            else "unexplained (a residual difference remains)"
        )
        lines.append(f"  causes: {causes}; {state}")
        lines.extend(f"  not confirmed: {u.note}" for u in row.below_noise_floor)
    if row.ssim is not None:
        t = _reference_limits(t, row)

        def check(name: str, value: float | None, op: str, limit: float, fmt: str) -> str:
            if value is None:
                return f"  {name:<8} n/a"
            ok = value >= limit if op == ">=" else value <= limit
            verdict = "ok" if ok else "FAIL"
            return f"  {name:<8} {fmt.format(value):<10} (match needs {op} {limit:g})  {verdict}"

        lines.append(check("SSIM", row.ssim, ">=", t.ssim_min, "{:.4f}"))
        lines.append(check("PSNR", row.psnr, ">=", t.psnr_min, "{:.2f} dB"))
        lines.append(check("latent", row.latent_distance, "<=", t.latent_distance_max, "{:.4f}"))
    if row.video is not None:
        lines.extend(f"  {line}" for line in _video_lines(row.video))
    if row.resized_for_comparison:
        lines.append(
            f"  sizes differ: render {row.width_render}x{row.height_render}, preview "
            f"{row.width_preview}x{row.height_preview} (never a match)"
        )
    if row.detail:
        lines.append(f"  detail: {row.detail}")
    for label, rel in (("preview", row.preview), ("render", row.render)):
        if rel:
            lines.append(f"  {label + ':':<8} {(out_dir / rel).resolve()}")
    lines.append(f"  report:  {out_dir / 'report.html'}")
    return "\n".join(lines)


# ------------------------------------------------------------------- registration

_PLUGIN_NAME = "parity-state"


def _plugin(config: pytest.Config) -> ParityPlugin:
    """The session's plugin state, created on first use (a fixture in a session without
    ``--parity-job`` creates it then)."""
    plugin = config.pluginmanager.get_plugin(_PLUGIN_NAME)
    if plugin is None:
        plugin = ParityPlugin(config)
        config.pluginmanager.register(plugin, _PLUGIN_NAME)
    assert isinstance(plugin, ParityPlugin)
    return plugin


def _dist_chosen(config: pytest.Config) -> bool:
    """Whether the user picked an xdist distribution mode explicitly."""
    args = list(config.invocation_params.args)
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    try:
        args += list(config.getini("addopts"))
    except ValueError:
        pass
    return any(a == "--dist" or a.startswith("--dist=") or a == "-d" for a in args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not setting(config, "job"):
        return  # not a parity session: leave it alone
    config.addinivalue_line("markers", "parity: a preview-parity check of an ai-toolkit job")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    _plugin(config)
    # Items of one job share one run: keep them on one xdist worker (ids start with the
    # job name, which is loadfile's unit).
    if (
        getattr(config.option, "numprocesses", None)
        and getattr(config.option, "dist", None) in ("no", "load")
        and not _dist_chosen(config)
    ):
        config.option.dist = "loadfile"


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def parity_engine(pytestconfig: pytest.Config) -> Any:
    """Factory ``parity_engine(base_model, device=None)`` -> a cached RenderEngine.

    ``base_model`` is a local diffusers folder, a hub id or a
    :class:`parity.render.models.ModelSource`; engines are shared for the whole session.
    """
    plugin = _plugin(pytestconfig)

    def make(base_model: Any, device: str | None = None) -> Any:
        return plugin.engine(base_model, device or setting(pytestconfig, "device"))

    return make


@pytest.fixture(scope="session")
def parity_job() -> Any:
    """Factory ``parity_job(path, reference_model=None)`` -> :class:`parity.job.Job`."""
    from parity.job import read_job

    def make(path: str | os.PathLike[str], reference_model: str | None = None) -> Any:
        return read_job(path, reference_model=reference_model)

    return make


@pytest.fixture(scope="session")
def parity_thresholds(pytestconfig: pytest.Config) -> Any:
    """:class:`parity.compare.Thresholds` from the command line, ini file and [tool.parity]."""
    return thresholds(pytestconfig)
