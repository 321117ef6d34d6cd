"""pytest plugin: one test per training preview of an ai-toolkit job.

``pytest --parity-job output/my_lora`` collects one item per preview, named
``<job name>::step<N>::<index>``. The first item of a job runs the whole job through
:func:`parity.run.run_job` (once per process); every item then looks up its own result
row and passes when the row's verdict is ``match``. The plugin only collects, calls the
library and reports: comparison, attribution and the HTML report live in the library.

Every option is read through :func:`_lookup`: the command line wins over the pytest ini
file (``[tool.pytest.ini_options]``, ``pytest.ini``...). Match thresholds have more
sources; for each threshold, highest first:

1. the command line (``--parity-ssim-min`` ...),
2. the job's own ``parity.toml`` (keys ``ssim_min``, ``psnr_min``,
   ``latent_distance_max``, ``device``),
3. the pytest ini file (``parity_ssim_min`` ...),
4. ``[tool.parity]`` of the rootdir's ``pyproject.toml`` (same keys as ``parity.toml``),
5. the defaults of :class:`parity.compare.Thresholds`.

With pytest-xdist, the items of a job must run on one worker (the job is rendered once
per process). Item ids start with the job name, so ``--dist loadfile`` keeps a job
together; the plugin picks ``loadfile`` itself when ``-n`` is given without ``--dist``.
Items also carry ``xdist_group(name=<job>)`` for ``--dist loadgroup``, which groups only
where pytest-xdist can rename test ids (not with pytest 9.2 and pytest-xdist 3.8: there
every item of a ``loadgroup`` run is its own group).
"""

from __future__ import annotations

import os
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

#: Keys a job's parity.toml and ``[tool.parity]`` may set.
THRESHOLD_KEYS = ("ssim_min", "psnr_min", "latent_distance_max")
JOB_FILE_KEYS = (*THRESHOLD_KEYS, "device")
JOB_FILE = "parity.toml"

#: Properties recorded per item (junit XML ``<property>`` elements).
METRIC_PROPERTIES = ("ssim", "psnr", "ms_ssim", "latent_distance")


@dataclass(frozen=True)
class _Opt:
    flag: str
    dest: str
    ini: str
    ini_type: str  # "string", "linelist" or "bool"
    help: str
    action: str = "store"
    metavar: str | None = None


def _options() -> list[_Opt]:
    from parity.compare import Thresholds

    t = Thresholds()
    return [
        _Opt(
            "--parity-job",
            "parity_jobs",
            "parity_jobs",
            "linelist",
            "ai-toolkit job folder to check, one test per preview (repeatable)",
            "append",
            "DIR",
        ),
        _Opt(
            "--parity-base-model",
            "parity_base_model",
            "parity_base_model",
            "string",
            "local diffusers folder loaded in place of each job's model.name_or_path",
            metavar="PATH",
        ),
        _Opt(
            "--parity-model-map",
            "parity_model_map",
            "parity_model_map",
            "linelist",
            "map a hub id to a local folder (repeatable)",
            "append",
            "ID=PATH",
        ),
        _Opt(
            "--parity-device",
            "parity_device",
            "parity_device",
            "string",
            "cpu, cuda, cuda:N (default: a job's parity.toml device, else cuda if available)",
            metavar="D",
        ),
        _Opt(
            "--parity-steps",
            "parity_steps",
            "parity_steps",
            "string",
            "steps to check: all, last or N,N,... (default all)",
            metavar="STEPS",
        ),
        _Opt(
            "--parity-results",
            "parity_results",
            "parity_results",
            "string",
            "folder for run folders <job>/<worker>-<time>/ (default reports/pytest)",
            metavar="DIR",
        ),
        _Opt(
            "--parity-ssim-min",
            "parity_ssim_min",
            "parity_ssim_min",
            "string",
            f"match: SSIM >= this (default {t.ssim_min})",
            metavar="X",
        ),
        _Opt(
            "--parity-psnr-min",
            "parity_psnr_min",
            "parity_psnr_min",
            "string",
            f"match: PSNR >= this, dB (default {t.psnr_min})",
            metavar="DB",
        ),
        _Opt(
            "--parity-latent-max",
            "parity_latent_max",
            "parity_latent_max",
            "string",
            f"match: VAE latent distance <= this (default {t.latent_distance_max})",
            metavar="X",
        ),
        _Opt(
            "--parity-no-attribution",
            "parity_no_attribution",
            "parity_no_attribution",
            "bool",
            "verdicts only: no counterfactual renders for mismatches",
            "store_true",
        ),
        _Opt(
            "--parity-generate",
            "parity_generate",
            "parity_generate",
            "bool",
            "record each preview's reference render as the accepted baseline",
            "store_true",
        ),
        _Opt(
            "--parity-baseline-dir",
            "parity_baseline_dir",
            "parity_baseline_dir",
            "string",
            "baseline folder: <dir>/<job>/step<N>/<index>.png (default <job folder>/parity-baseline)",
            metavar="DIR",
        ),
    ]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "preview parity of ai-toolkit jobs")
    for opt in _options():
        kwargs: dict[str, Any] = {"dest": opt.dest, "help": opt.help, "default": None}
        if opt.action == "store_true":
            kwargs["action"] = "store_true"
        else:
            kwargs.update(action=opt.action, metavar=opt.metavar)
        group.addoption(opt.flag, **kwargs)
        parser.addini(opt.ini, f"{opt.help} (like {opt.flag})", type=opt.ini_type, default=None)


def _lookup(config: pytest.Config, dest: str) -> tuple[Any, Path | None]:
    """An option's value and the folder its relative paths are relative to.

    The command line wins over the ini file; ``(None, None)`` when neither sets it.
    """
    value = config.getoption(dest, None)
    if value not in (None, []):
        return value, Path(config.invocation_params.dir)
    value = config.getini(dest)
    if value not in (None, "", []):
        base = config.inipath.parent if config.inipath else config.rootpath
        return value, base
    return None, None


def _value(config: pytest.Config, dest: str, default: Any = None) -> Any:
    value, _ = _lookup(config, dest)
    return default if value is None else value


def _path(config: pytest.Config, dest: str) -> Path | None:
    value, base = _lookup(config, dest)
    if value is None:
        return None
    assert base is not None
    return (base / Path(value).expanduser()).resolve()


def _float(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{what}: expected a number, got {value!r}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise pytest.UsageError(f"{path}: cannot read: {e}") from None


# --------------------------------------------------------------------- the plugin


@dataclass
class _JobRun:
    """The result of running one job in this process."""

    out_dir: Path | None = None
    rows: dict[tuple[int, int], Any] = field(default_factory=dict)
    error: str | None = None


class ParityFailure(Exception):
    """An item's preview (or its baseline) does not match; the message says why."""


class ParityPlugin:
    """State of the plugin for one pytest process (controller or worker)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self.generate = bool(_value(config, "parity_generate", False))
        self.attribute = not _value(config, "parity_no_attribution", False)
        self.results_root = _path(config, "parity_results") or (
            config.rootpath / "reports" / "pytest"
        )
        self.baseline_dir = _path(config, "parity_baseline_dir")
        self.base_model = _path(config, "parity_base_model")
        self.model_map = list(_value(config, "parity_model_map", []))
        self.device = _value(config, "parity_device")
        self.steps = str(_value(config, "parity_steps", "all"))
        pyproject = config.rootpath / "pyproject.toml"
        self.pyproject = pyproject if pyproject.is_file() else None
        tool = _read_toml(pyproject).get("tool", {}) if self.pyproject else {}
        self.project_settings = dict(tool.get("parity", {}) or {})
        self.engines: dict[tuple[str, str], Any] = {}
        self.runs: dict[str, _JobRun] = {}
        # nodeid -> (job, status, run folder, worker): filled from reports, so that the
        # xdist controller sees every worker's items.
        self.outcomes: dict[str, tuple[str, str, str, str]] = {}

    # ---- settings

    def job_paths(self) -> list[Path]:
        values, base = _lookup(self.config, "parity_jobs")
        if not values:
            return []
        assert base is not None
        return [(base / Path(v).expanduser()).resolve() for v in values]

    def thresholds(self, job_settings: dict[str, Any] | None = None) -> Any:
        """Thresholds with the documented precedence (see the module docstring)."""
        from parity.compare import Thresholds

        flags = {
            "ssim_min": "parity_ssim_min",
            "psnr_min": "parity_psnr_min",
            "latent_distance_max": "parity_latent_max",
        }
        values: dict[str, float] = {}
        for key, dest in flags.items():
            cli = self.config.getoption(dest, None)
            ini = self.config.getini(dest)
            for value, what in (
                (cli, f"--{dest.replace('_', '-')}"),
                ((job_settings or {}).get(key), f"{JOB_FILE} {key}"),
                (ini if ini not in (None, "") else None, f"ini {dest}"),
                (self.project_settings.get(key), f"[tool.parity] {key}"),
            ):
                if value is not None:
                    values[key] = _float(value, what)
                    break
        return Thresholds(**values)

    def job_device(self, job_settings: dict[str, Any]) -> str | None:
        cli = self.config.getoption("parity_device", None)
        ini = self.config.getini("parity_device") or None
        return cli or job_settings.get("device") or ini or self.project_settings.get("device")

    # ---- engines and runs

    def engine(self, source: Any, device: str | None) -> Any:
        """One RenderEngine per (model, device) for the whole process."""
        from parity.engine import RenderEngine, default_device

        device = device or default_device()
        if isinstance(source, (str, Path)) and Path(source).exists():
            source = str(Path(source).resolve())
        key = (repr(source), device)
        if key not in self.engines:
            self.engines[key] = RenderEngine(source, device=device)
        return self.engines[key]

    def run(self, node: ParityJob) -> _JobRun:
        """Run ``node``'s job once per process and keep its rows."""
        if node.job.name in self.runs:
            return self.runs[node.job.name]
        result = _JobRun()
        self.runs[node.job.name] = result
        from parity.models import job_source
        from parity.run import RunOptions, run_job

        job = node.job
        session_items = getattr(node.session, "items", None) or []
        # Only the steps of the items still selected (after -k, deselection...).
        steps = sorted(
            {i.step for i in session_items if isinstance(i, ParityItem) and i.parent is node}
        ) or list(node.steps)
        try:
            source = job_source(
                job.name_or_path,
                job.extras_name_or_path,
                base_model=self.base_model,
                model_map=self.model_map,
                pyproject=self.pyproject,
            )
            from parity.engine import default_device

            device = node.device or default_device()
            engine = self.engine(source, device)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            out_dir = self.results_root / job.name / f"{self.worker}-{stamp}"
            result.out_dir = out_dir
            options = RunOptions(
                steps=tuple(steps),
                attribute=self.attribute and not self.generate,
                thresholds=node.thresholds,
                progress=False,
            )
            summary = run_job(job, engine, out_dir, options, device=device)
        except Exception as e:  # every item of the job reports it
            result.error = (
                f"parity could not run job {job.name} ({job.root}): {type(e).__name__}: {e}"
            )
            return result
        result.rows = {(r.step, r.index): r for r in summary.rows}
        return result

    def baseline_path(self, node: ParityJob, step: int, index: int) -> Path:
        root = self.baseline_dir or (node.job.root / "parity-baseline")
        return root / node.job.name / f"step{step}" / f"{index}.png"

    # ---- hooks

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        seen: set[str] = set()
        for path in self.job_paths():
            node = ParityJob.for_path(session, path)
            if node.name in seen:
                raise pytest.UsageError(
                    f"{path}: a job named {node.name!r} is already collected; job names must differ"
                )
            seen.add(node.name)
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

    job: Any = None
    job_error: Exception | None = None
    settings: dict[str, Any]

    @classmethod
    def for_path(cls, session: pytest.Session, path: Path) -> ParityJob:
        from parity.job import read_job

        job, error = None, None
        try:
            job = read_job(path)
            name = job.name
        except Exception as e:  # reported as this job's collection error
            name, error = path.name, e
        node = cls.from_parent(session, name=name, nodeid=name, path=path)
        node.job, node.job_error = job, error
        return node

    def _settings(self) -> dict[str, Any]:
        path = self.path / JOB_FILE
        if not path.is_file():
            return {}
        settings = _read_toml(path)
        unknown = sorted(set(settings) - set(JOB_FILE_KEYS))
        if unknown:
            raise pytest.UsageError(
                f"{path}: unknown key(s) {unknown}; known keys: {', '.join(JOB_FILE_KEYS)}"
            )
        return settings

    def collect(self) -> list[ParityItem]:
        from parity.run import parse_steps, select_steps

        if self.job_error is not None:
            raise self.job_error
        plugin = _plugin(self.config)
        self.settings = self._settings()
        self.thresholds = plugin.thresholds(self.settings)
        self.device = plugin.job_device(self.settings)
        steps = select_steps(self.job, parse_steps(plugin.steps))
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
                ("verdict", row.verdict),
                ("causes", ";".join(row.causes)),
                ("explained", str(row.explained).lower()),
            ]
        )
        assert run.out_dir is not None
        out_dir = run.out_dir.resolve()
        if row.verdict == "error":
            props.append(("status", "error"))
            raise ParityFailure(_describe(node, row, out_dir, run_thresholds=node.thresholds))
        baseline = plugin.baseline_path(node, self.step, self.index)
        if row.render is None:
            props.append(("status", "error"))
            raise ParityFailure(_describe(node, row, out_dir, run_thresholds=node.thresholds))
        render = out_dir / row.render
        if plugin.generate:
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
                props.append(("drift_ssim", f"{drift:.6g}"))
                problems.append(
                    f"reference drift: the reference render of {node.name} step {self.step} "
                    f"preview {self.index} changed since its baseline was recorded "
                    f"(SSIM {drift:.4f} < {DRIFT_SSIM_MIN})\n"
                    f"  baseline: {baseline}\n  render:   {render}\n"
                    "  (re-record with --parity-generate once the change is accepted)"
                )
        status = row.verdict if row.verdict != "match" else ("drift" if problems else "match")
        props.append(("status", status))
        if problems:
            raise ParityFailure("\n".join(problems))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ParityFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.job_node.job.config_path, None, self.nodeid


def _drift(baseline: Path, render: Path) -> float | None:
    """SSIM of the render against its baseline when below :data:`DRIFT_SSIM_MIN`."""
    from parity import compare

    a, b = compare.load_rgb(baseline), compare.load_rgb(render)
    if a.shape != b.shape:
        return -1.0
    c = compare.compare(a, b)
    return c.ssim if c.ssim < DRIFT_SSIM_MIN else None


def _describe(node: ParityJob, row: Any, out_dir: Path, *, run_thresholds: Any) -> str:
    """The failure message of a mismatch or error row."""
    t = run_thresholds
    lines = [f"{node.name} step {row.step} preview {row.index}: {row.verdict.upper()}"]
    if row.verdict == "mismatch":
        causes = ", ".join(row.causes) or "none confirmed"
        state = (
            "explained (switching these causes reproduces the preview)"
            if row.explained
            else "unexplained (a residual difference remains)"
        )
        lines.append(f"  causes: {causes}; {state}")
    if row.ssim is not None:

        def check(name: str, value: float | None, op: str, limit: float, fmt: str) -> str:
            if value is None:
                return f"  {name:<8} n/a"
            ok = value >= limit if op == ">=" else value <= limit
            verdict = "ok" if ok else "FAIL"
            return f"  {name:<8} {fmt.format(value):<10} (match needs {op} {limit:g})  {verdict}"

        lines.append(check("SSIM", row.ssim, ">=", t.ssim_min, "{:.4f}"))
        lines.append(check("PSNR", row.psnr, ">=", t.psnr_min, "{:.2f} dB"))
        lines.append(check("latent", row.latent_distance, "<=", t.latent_distance_max, "{:.4f}"))
        if row.ms_ssim is not None:
            lines.append(f"  MS-SSIM  {row.ms_ssim:.4f}")
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


def _plugin(config: pytest.Config) -> ParityPlugin:
    plugin = config.pluginmanager.get_plugin("parity-state")
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
    config.addinivalue_line("markers", "parity: a preview-parity check of an ai-toolkit job")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    plugin = ParityPlugin(config)
    config.pluginmanager.register(plugin, "parity-state")
    # Items of one job share one run: keep them on one xdist worker (ids start with the
    # job name, which is loadfile's unit).
    if (
        plugin.job_paths()
        and getattr(config.option, "numprocesses", None)
        and getattr(config.option, "dist", None) in ("no", "load")
        and not _dist_chosen(config)
    ):
        config.option.dist = "loadfile"


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def parity_engine(pytestconfig: pytest.Config) -> Any:
    """Factory ``parity_engine(base_model, device=None)`` -> a cached RenderEngine.

    ``base_model`` is a local diffusers folder, a hub id or a
    :class:`parity.models.ModelSource`; engines are shared for the whole session.
    """
    plugin = _plugin(pytestconfig)

    def make(base_model: Any, device: str | None = None) -> Any:
        return plugin.engine(base_model, device or plugin.device)

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
    return _plugin(pytestconfig).thresholds()
