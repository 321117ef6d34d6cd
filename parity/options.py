"""The one option table: every option of a run, for every front door.

The command line (:mod:`parity.cli`) and the pytest plugin (:mod:`parity.pytest_plugin`)
generate their arguments from :data:`OPTIONS` (argparse's ``add_argument``, pytest's
``addoption``/``addini``), read values with one function, :func:`resolve`, and turn them
into one :class:`parity.run.RunOptions` with :func:`run_options`. The fleet's workers get
that record as it is, so ``parity run``, ``--workers``, ``--ray`` and ``pytest
--parity-job`` decide with the same settings.

Precedence, highest first, the same for every front door (:func:`resolve`):

1. the command line (``--ssim-min``, or ``--parity-ssim-min`` under pytest);
2. front-door layers in between: a resumed run's recorded options (``parity run
   --resume``); under pytest a job's ``parity.toml`` (the ``per_job`` options) and the
   pytest ini file (``parity_ssim_min`` ...);
3. the environment (``PARITY_SSIM_MIN`` ...; lists comma-separated);
4. ``[tool.parity]`` of ``pyproject.toml`` (the current directory's for the command
   line, pytest's rootdir's for the plugin), only when that file exists;
5. the option's default.

Model maps (``--model-map``, ``PARITY_MODEL_MAP``, ``[tool.parity.models]``) follow the
same order inside :meth:`parity.model_map.ModelMap.load`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from parity.errors import ParityError
from parity.families import SERVER_MODELS
from parity.settings import (
    DEFAULT_CONFIRM_MARGIN,
    DEFAULT_LATENT_DISTANCE_MAX,
    DEFAULT_PSNR_MIN,
    DEFAULT_SSIM_MIN,
)

if TYPE_CHECKING:
    from parity.run import RunOptions

Kind = Literal["path", "paths", "model", "string", "strings", "int", "float", "bool"]

#: The command-line commands that take the options of a job run.
JOB_COMMANDS = frozenset({"inspect", "preview", "run", "explain", "noise"})
#: ... and those that judge renders (thresholds, attribution).
JUDGING_COMMANDS = frozenset({"run", "explain"})
#: ... and those that read the requests a user sent.
REQUEST_COMMANDS = frozenset({"inspect", "run", "explain"})
MODEL_COMMANDS = JOB_COMMANDS | {"render"}

#: ``[tool.parity]`` keys that are tables of their own, not options.
TOOL_TABLES = frozenset({"models"})


@dataclass(frozen=True)
class Option:
    """One option of a run.

    Attributes
    ----------
    name:
        Its key everywhere: the attribute of the parsed command line, the key in
        ``[tool.parity]``, in a job's ``parity.toml`` and in a run's recorded options.
    flag:
        The command-line flag; under pytest it is ``--parity-`` + the flag's name.
    kind:
        How a value is read: ``path``/``paths`` resolve against their source's folder,
        ``model`` is a path when it exists there and a hub id otherwise, lists take
        repeated flags (and comma-separated environment values).
    help, default, metavar, choices:
        As argparse's.
    commands:
        The command-line commands that take it (empty: the plugin only).
    plugin:
        The pytest plugin takes it.
    ini:
        Its pytest ini name (default ``parity_`` + the flag's name with underscores).
    per_job:
        A job's ``parity.toml`` may set it (pytest).
    env:
        Read from the environment variable ``PARITY_<NAME>`` (False where another
        mechanism owns the variable).
    """

    name: str
    flag: str
    kind: Kind
    help: str
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    commands: frozenset[str] = frozenset()
    plugin: bool = True
    ini: str | None = None
    per_job: bool = False
    env: bool = True

    @property
    def plugin_flag(self) -> str:
        return "--parity-" + self.flag.removeprefix("--")

    @property
    def ini_name(self) -> str:
        return self.ini or "parity_" + self.flag.removeprefix("--").replace("-", "_")

    @property
    def env_name(self) -> str | None:
        return f"PARITY_{self.name.upper()}" if self.env else None

    @property
    def is_list(self) -> bool:
        return self.kind in ("paths", "strings")


OPTIONS: tuple[Option, ...] = (
    Option("job", "--job", "paths", "ai-toolkit job folder to check, one test per preview "
           "(repeatable)", metavar="DIR", ini="parity_jobs", env=False),
    Option("base_model", "--base-model", "model", "local diffusers folder to load in place "
           "of the job's model.name_or_path (for 'parity render': the request model's "
           "checkpoint)", metavar="PATH", commands=MODEL_COMMANDS),
    # PARITY_MODEL_MAP and [tool.parity.models] are read by ModelMap.load, in this order.
    Option("model_map", "--model-map", "strings", "map a hub id to a local folder "
           "(repeatable); also PARITY_MODEL_MAP and [tool.parity.models] in pyproject.toml, "
           "with lower precedence", metavar="ID=PATH", commands=MODEL_COMMANDS, env=False),
    Option("device", "--device", "string", "cpu, cuda, cuda:N (default: cuda if available)",
           metavar="D", commands=MODEL_COMMANDS, per_job=True),
    Option("threads", "--threads", "int", "CPU threads for torch (default: torch's own "
           "choice); 1 is fastest for tiny models", metavar="N", commands=MODEL_COMMANDS),
    Option("dtype", "--dtype", "string", "reference-side dtype (default: the server's rule, "
           "bf16 on CUDA, fp32 on CPU)", choices=("fp32", "fp16", "bf16"),
           commands=MODEL_COMMANDS),
    Option("reference_model", "--model", "string", "reference model id when the job's "
           "arch/name_or_path do not say it", choices=tuple(sorted(SERVER_MODELS)),
           commands=JOB_COMMANDS),
    Option("allow_outside_paths", "--allow-outside-paths", "bool", "allow previews, "
           "checkpoints and request LoRAs that resolve outside their folder (symlinks)",
           default=False, commands=JOB_COMMANDS | {"render"}),
    Option("steps", "--steps", "string", "steps to check: all, last or N,N,... (default all; "
           "with a request, the steps its requests name)", metavar="STEPS",
           commands=frozenset({"run", "noise"})),
    Option("no_attribution", "--no-attribution", "bool", "verdicts only: no counterfactual "
           "renders for mismatches", default=False, commands=frozenset({"run"})),
    Option("history", "--history", "string", "history table to append to, .parquet or .csv",
           default="reports/history.parquet", commands=frozenset({"run"}), plugin=False),
    Option("no_history", "--no-history", "bool", "do not append to the history table",
           default=False, commands=frozenset({"run"}), plugin=False),
    Option("ssim_min", "--ssim-min", "float", f"match: SSIM >= this (default {DEFAULT_SSIM_MIN})",
           default=DEFAULT_SSIM_MIN, metavar="X", commands=JUDGING_COMMANDS, per_job=True),
    Option("psnr_min", "--psnr-min", "float", f"match: PSNR >= this, dB (default "
           f"{DEFAULT_PSNR_MIN})", default=DEFAULT_PSNR_MIN, metavar="DB",
           commands=JUDGING_COMMANDS, per_job=True),
    Option("latent_distance_max", "--latent-max", "float", "match: VAE latent cosine "
           f"distance <= this (default {DEFAULT_LATENT_DISTANCE_MAX})",
           default=DEFAULT_LATENT_DISTANCE_MAX, metavar="X", commands=JUDGING_COMMANDS,
           per_job=True),
    Option("confirm_margin", "--confirm-margin", "float", "a cause is confirmed when "
           "reverting it alone raises 1-SSIM by more than this (default "
           f"{DEFAULT_CONFIRM_MARGIN})", default=DEFAULT_CONFIRM_MARGIN, metavar="X",
           commands=JUDGING_COMMANDS),
    Option("request", "--request", "paths", "a request you sent the server (its JSON body, "
           'or {"inputs": ...}): the previews of the step whose checkpoint its '
           "loras[0].path names are compared with its prompts instead of the "
           "as-configured request (repeatable)", metavar="REQ.json",
           commands=REQUEST_COMMANDS, ini="parity_requests"),
    Option("served", "--served", "paths", "the images the server returned for the "
           "--request of the same position, <prompt index>.png|jpg|jpeg|webp, compared "
           "with parity's reference render (repeatable)", metavar="DIR",
           commands=REQUEST_COMMANDS),
    Option("lora_root", "--lora-root", "path", "the server's workflows folder, where "
           "request LoRA paths resolve (default: the job's training folder, the job "
           "folder's parent, so <job name>/<file>.safetensors names a checkpoint; for "
           "'parity render': the request file's folder)", metavar="DIR",
           commands=REQUEST_COMMANDS | {"render"}),
    Option("match", "--match", "string", "index: prompt i of a request with preview i of its "
           "step (default); prompt: by resolved prompt text", default="index",
           choices=("index", "prompt"), commands=REQUEST_COMMANDS),
    Option("server_diffusers", "--server-diffusers", "string", "the diffusers release the "
           "server runs, e.g. 0.38.0.dev0 or 072d15ee (runcomfy's requirements pin): what N "
           "steps and a guidance value mean on the reference side (default: the installed "
           "diffusers)", metavar="VERSION|COMMIT", commands=REQUEST_COMMANDS | {"render"}),
    Option("results", "--results", "path", "folder for run folders <job>/<worker>-<time>/ "
           "(default reports/pytest under the rootdir)", metavar="DIR"),
    Option("generate", "--generate", "bool", "record each preview's reference render as the "
           "accepted baseline", default=False),
    Option("baseline_dir", "--baseline-dir", "path", "baseline folder: "
           "<dir>/<job>/step<N>/<index>.png (default <job folder>/parity-baseline)",
           metavar="DIR"),
)  # fmt: skip

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def options_of(command: str) -> tuple[Option, ...]:
    """The options command-line ``command`` takes, in table order."""
    return tuple(o for o in OPTIONS if command in o.commands)


def plugin_options() -> tuple[Option, ...]:
    """The options the pytest plugin takes, in table order."""
    return tuple(o for o in OPTIONS if o.plugin)


# ------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Layer:
    """One source of option values.

    Attributes
    ----------
    source:
        What it is, for messages (``"the command line"``, ``"PARITY_* environment"``...).
    values:
        Option name -> raw value; None, ``""`` and ``[]`` mean "not given here".
    base:
        The folder relative paths of this source are relative to.
    names:
        Only these options are read from it (None: every option).
    """

    source: str
    values: Mapping[str, Any]
    base: Path
    names: frozenset[str] | None = None


def given(value: Any) -> bool:
    """Whether a raw value was given (None, ``""`` and ``[]`` were not)."""
    return value not in (None, "", [], ())


def convert(option: Option, value: Any, base: Path, source: str) -> Any:
    """``value`` from ``source`` as ``option``'s kind; relative paths against ``base``.

    Raises
    ------
    ParityError
        A value that is not of the option's kind; the message names the source.
    """

    def path(v: Any) -> str:
        return str((base / Path(str(v)).expanduser()).absolute())

    try:
        if option.kind == "path":
            return path(value)
        if option.kind == "model":  # a folder here, else a hub id as given
            local = base / Path(str(value)).expanduser()
            return str(local.absolute()) if local.exists() else str(value)
        if option.is_list:
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [str(v).strip() for v in items if str(v).strip()]
            return [path(v) for v in items] if option.kind == "paths" else items
        if option.kind == "int":
            return int(value)
        if option.kind == "float":
            return float(value)
        if option.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(value)
            return text in ("1", "true", "yes", "on")
    except (TypeError, ValueError):
        raise ParityError(
            f"{source}: {option.name} must be {_KIND_TEXT[option.kind]}, not {value!r}"
        ) from None
    text = str(value)
    if option.choices is not None and text not in option.choices:
        raise ParityError(
            f"{source}: {option.name} must be one of {', '.join(option.choices)}, not {text!r}"
        )
    return text


_KIND_TEXT = {
    "path": "a path",
    "paths": "a list of paths",
    "model": "a folder or hub id",
    "string": "a string",
    "strings": "a list of strings",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
}


def resolve(layers: Sequence[Layer], names: Iterable[str] | None = None) -> dict[str, Any]:
    """Option name -> value, each from the first of ``layers`` that gives it, converted
    (:func:`convert`); the option's default where none does.

    ``layers`` go highest precedence first (see the module docstring); ``names`` limits
    the options resolved (default: all).
    """
    out: dict[str, Any] = {}
    for name in names if names is not None else BY_NAME:
        option = BY_NAME[name]
        out[name] = [] if option.is_list and option.default is None else option.default
        for layer in layers:
            if layer.names is not None and name not in layer.names:
                continue
            value = layer.values.get(name)
            if given(value):
                out[name] = convert(option, value, layer.base, f"{layer.source} ({name})")
                break
    return out


def environment_layer(environ: Mapping[str, str] | None = None) -> Layer:
    """The ``PARITY_<NAME>`` environment variables (paths relative to the current folder)."""
    environ = os.environ if environ is None else environ
    values = {o.name: environ.get(o.env_name) for o in OPTIONS if o.env_name}
    return Layer("PARITY_* environment variables", values, Path.cwd())


def pyproject_layer(path: Path, *, names: Iterable[str] | None = None) -> Layer | None:
    """``[tool.parity]`` of the pyproject.toml at ``path``; None when there is no such file
    (a missing pyproject.toml is simply not a source).

    Raises
    ------
    ParityError
        The file exists but cannot be read, or its table has keys that are no option.
    """
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            tool = tomllib.load(f).get("tool", {}).get("parity", {}) or {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ParityError(f"{path}: cannot read [tool.parity]: {e}") from None
    values = {k: v for k, v in tool.items() if k not in TOOL_TABLES}
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise ParityError(
            f"{path}: [tool.parity] has unknown key(s) {unknown}; known: {', '.join(BY_NAME)}"
        )
    return Layer(
        f"{path} [tool.parity]",
        values,
        path.parent,
        frozenset(names) if names is not None else None,
    )


def standard_layers(flags: Layer, *between: Layer, pyproject: Path | None) -> list[Layer]:
    """The layers in precedence order: ``flags``, the front door's own ``between``, the
    environment, then ``pyproject`` when that file exists."""
    layers = [flags, *between, environment_layer()]
    tool = pyproject_layer(pyproject) if pyproject is not None else None
    if tool is not None:
        layers.append(tool)
    return layers


# ------------------------------------------------------------------ run options


def history_of(values: Mapping[str, Any]) -> str | None:
    """The history table a run appends to: ``--history``, unless ``--no-history``
    (None: no history)."""
    history = values.get("history")
    return str(history) if history and not values.get("no_history") else None


def run_options(values: Mapping[str, Any], **fixed: Any) -> RunOptions:
    """The :class:`parity.run.RunOptions` of resolved option ``values`` (:func:`resolve`);
    ``fixed`` sets RunOptions fields a front door decides itself (``progress``...).

    Raises
    ------
    ParityError
        A malformed ``steps`` or ``server_diffusers``.
    """
    from parity.compare import Thresholds
    from parity.families import check_server_diffusers
    from parity.plan import parse_steps
    from parity.plan.sides import normalize_dtype
    from parity.run import RunOptions

    fields: dict[str, Any] = {
        "steps": parse_steps(values["steps"]) if values.get("steps") else "all",
        "attribute": not values.get("no_attribution"),
        "thresholds": Thresholds(
            ssim_min=values["ssim_min"],
            psnr_min=values["psnr_min"],
            latent_distance_max=values["latent_distance_max"],
        ),
        "confirm_margin": values["confirm_margin"],
        "reference_dtype": normalize_dtype(values["dtype"]) if values.get("dtype") else None,
        "allow_outside_paths": bool(values.get("allow_outside_paths")),
        "server_diffusers": check_server_diffusers(values.get("server_diffusers") or None),
        "match": values.get("match") or "index",
        "lora_root": Path(values["lora_root"]) if values.get("lora_root") else None,
    }
    fields.update(fixed)
    return RunOptions(**fields)
