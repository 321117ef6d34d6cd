"""Read an ai-toolkit job folder the way ai-toolkit itself reads it.

A job folder ``<training_folder>/<name>/`` holds ``config.yaml`` (or a ``.json`` job
file), LoRA checkpoints ``<name>_<9-digit step>.safetensors`` plus the final
``<name>.safetensors``, and previews ``samples/<ms>__<9-digit step>_<i>.<ext>``.

Sample semantics follow ai-toolkit's SampleConfig / SampleItem / GenerateImageConfig:
sample-level defaults, per-item fallbacks, the running seed with ``walk_seed``,
``[trigger]`` replacement, prompt flags after ``--``, and the floor to a multiple of 8
with a minimum of 64. The model's own floor (16, or 32 in old eras) is applied by the
preview side (:mod:`parity.plan.sides`), not here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parity.aitk import SAMPLE_DEFAULTS, aitk_version_from_metadata, floor8
from parity.errors import PICKLED_SUFFIXES, JobError, SampleError
from parity.families import family_of_config
from parity.family import Family
from parity.job.lora_files import KeyAudit, audit_keys, describe_dtype, read_header
from parity.model_map import ModelMap
from parity.settings import Quantization

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^(?P<name>.+)_(?P<step>\d{9})\.safetensors$")
PREVIEW_RE = re.compile(r"^(?P<ms>\d+)__(?P<step>\d{9})_(?P<index>\d+)\.(?P<ext>[A-Za-z0-9]+)$")
IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SampleSpec:
    """One sample item as ai-toolkit resolved it (before the model's size floor).

    ``prompt`` is the text ai-toolkit encoded (trigger substituted, flags removed);
    ``prompt_template`` is the text before trigger substitution with flags removed (what
    a request carries so the server substitutes the trigger itself). ``error`` is set
    when the item cannot be used; its other fields are then best effort.
    """

    index: int
    prompt_raw: str
    prompt: str
    prompt_template: str
    negative_prompt: str
    width: int
    height: int
    seed: int
    guidance_scale: float
    steps: int
    network_multiplier: float
    explicit_seed: bool
    flags: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    #: Frames and frame rate of the item (a video family's; 1 frame for an image).
    num_frames: int = 1
    fps: int = 16
    #: The frames ai-toolkit's pipeline rendered for ``num_frames`` (the family's rule,
    #: :attr:`parity.family.Family.preview_frames`); None for an image family.
    rendered_frames: int | None = None
    #: Settings written in the config (sample level, item level or prompt flag), as
    #: opposed to ai-toolkit defaults: a user copying the config copies only these.
    written: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Checkpoint:
    """A LoRA checkpoint of the job, known from its safetensors header alone.

    ``dtype`` is the safetensors dtype of its update tensors (``BF16``, ``F32``; None when
    mixed or unreadable); ``audit`` what the server's loader does with its keys.
    """

    path: Path
    step: int
    is_final: bool
    metadata: dict[str, str]
    aitk_version: str | None
    dtype: str | None = None
    audit: KeyAudit | None = None
    #: A two-expert model's second file of the pair (``*_low_noise.safetensors``, for
    #: ``transformer_2``); ``path`` is then the first expert's (``*_high_noise``).
    path_2: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file of the checkpoint: the one, or the pair in expert order."""
        return (self.path,) if self.path_2 is None else (self.path, self.path_2)

    @property
    def rounded(self) -> bool:
        """Saved below float32: the file holds a rounding of the training weights."""
        return self.dtype in ("BF16", "F16")


@dataclass(frozen=True)
class Network:
    """The config's ``network`` section: what was trained.

    ai-toolkit writes Z-Image and FLUX.1 LoRAs in PEFT format with alpha equal to the rank, so a
    ``linear_alpha`` other than ``linear`` is ignored (:attr:`alpha_ignored`): training,
    previews and the file all run at scale 1.0, and so does the server. LoKr keeps its
    alpha keys (full rank: alpha 1e10, scale 1).
    """

    type: str = "lora"
    linear: int | None = None
    linear_alpha: float | None = None

    @property
    def alpha_ignored(self) -> bool:
        return (
            self.type == "lora"
            and self.linear_alpha is not None
            and self.linear is not None
            and float(self.linear_alpha) != float(self.linear)
        )


@dataclass(frozen=True)
class TrainingSetup:
    """The other process keys ai-toolkit's UI writes, read for what they do to previews.

    Attributes
    ----------
    process_type:
        ``sd_trainer`` (older jobs) or ``diffusion_trainer`` (the UI): the same trainer.
    save_dtype:
        dtype of the saved checkpoints (``save.dtype``); previews used the float32
        training weights, so a bf16 save is their rounding.
    ema:
        ``train.ema_config.use_ema``: ai-toolkit swaps the EMA weights in before sampling
        and before saving, so previews and checkpoints hold the same weights.
    assistant_lora_path:
        The training adapter as written (``model.assistant_lora_path``), or None.
    low_vram, layer_offloading, cache_text_embeddings, unload_text_encoder:
        Where ai-toolkit keeps weights and embeddings; only ``layer_offloading`` changes
        pixels (qfloat8 becomes torchao float8, see the family's ``preview_qtypes``).
    skip_first_sample, force_first_sample, disable_sampling:
        Which previews exist at all.
    """

    process_type: str = "sd_trainer"
    network: Network = Network()
    save_dtype: str = "float16"
    ema: bool = False
    assistant_lora_path: str | None = None
    low_vram: bool = False
    layer_offloading: bool = False
    cache_text_embeddings: bool = False
    unload_text_encoder: bool = False
    skip_first_sample: bool = False
    force_first_sample: bool = False
    disable_sampling: bool = False

    def notes(self) -> list[str]:
        """What these settings mean for the previews, one line each (``parity inspect``)."""
        out = []
        n = self.network
        if n.alpha_ignored:
            out.append(
                f"network.linear_alpha {n.linear_alpha:g} differs from linear {n.linear}: "
                "ai-toolkit ignores it (PEFT format, alpha = rank), so the LoRA "
                "runs at scale 1.0 in previews, in the saved file and on the server"
            )
        if n.type == "lokr":
            out.append("network.type lokr: a LoKr file; the server's diffusers loads it as LoKr")
        if self.ema:
            out.append(
                "EMA: ai-toolkit swaps the EMA weights in before sampling and before saving, "
                "so previews and checkpoints hold the same weights; no cause"
            )
        if self.assistant_lora_path:
            out.append(
                f"training adapter {self.assistant_lora_path}: previews show Q(W + A) - A "
                "plus the LoRA, the server W plus the LoRA (a precision cause)"
            )
        if self.layer_offloading:
            out.append("layer_offloading: ai-toolkit quantized with torchao float8, not quanto")
        if self.cache_text_embeddings or self.unload_text_encoder or self.low_vram:
            out.append(
                "low_vram / cache_text_embeddings / unload_text_encoder move weights and "
                "embeddings between devices; the sample prompts are encoded by the same text "
                "encoder, so pixels do not change"
            )
        if self.disable_sampling:
            out.append("train.disable_sampling: ai-toolkit rendered no previews for this job")
        elif self.skip_first_sample:
            out.append("train.skip_first_sample: no step-0 previews")
        return out


@dataclass(frozen=True)
class Preview:
    path: Path
    step: int
    index: int
    ext: str


@dataclass(frozen=True)
class Job:
    """An ai-toolkit job folder, read."""

    root: Path
    config_path: Path
    name: str
    #: The model family (``"zimage"``, ``"flux"``; :mod:`parity.families`).
    family: str
    arch: str
    arch_tag: str | None
    reference_model: str
    name_or_path: str
    extras_name_or_path: str | None
    trigger_word: str | None
    train_dtype: str
    quantization: Quantization
    sample_config: dict[str, Any]
    samples: tuple[SampleSpec, ...]
    merged_lora: bool
    checkpoints: tuple[Checkpoint, ...]
    previews: tuple[Preview, ...]
    problems: tuple[str, ...] = ()
    #: Checkpoint files of a step that were refused (pickled formats), by step.
    refused_checkpoints: Mapping[int, str] = field(default_factory=dict)
    setup: TrainingSetup = TrainingSetup()
    #: The training adapter's local file, resolved (None: no adapter, or not found, in
    #: which case ``adapter_problem`` says why).
    adapter_path: Path | None = None
    adapter_problem: str | None = None
    #: Every checkpoint file by name, with its step: also the final ``<name>.safetensors``
    #: where a step file of the same step is the one in ``checkpoints``.
    checkpoint_files: Mapping[str, int] = field(default_factory=dict)
    #: ai-toolkit switched the VAE's tiled decode on for the previews (the family's rule,
    #: :attr:`parity.family.Family.preview_vae_tiling`).
    vae_tiling: bool = False

    @property
    def steps(self) -> list[int]:
        """Steps that have previews, ascending."""
        return sorted({p.step for p in self.previews})

    @property
    def aitk_version(self) -> str | None:
        for ckpt in reversed(self.checkpoints):
            if ckpt.aitk_version:
                return ckpt.aitk_version
        return None

    def checkpoint_for_step(self, step: int) -> Checkpoint | None:
        """The LoRA the previews of ``step`` were rendered with (None: no LoRA file).

        Step 0 previews come before training (LoRA B = 0), so the base model alone
        reproduces them exactly.
        """
        for ckpt in self.checkpoints:
            if ckpt.step == step:
                return ckpt
        return None


def outside_path_error(
    path: Path, root: Path, what: str, place: str = "the job folder"
) -> str | None:
    """An error text when ``path`` resolves outside ``root`` (e.g. a symlink out of it)."""
    resolved = path.resolve()
    if resolved.is_relative_to(root.resolve()):
        return None
    return (
        f"{path}: {what} resolves outside {place} {root} (to {resolved}); refused, "
        "pass --allow-outside-paths to allow it"
    )


# ------------------------------------------------------------------------- loading


class _AitkLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as ai-toolkit's patched loader does."""


_AitkLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_job_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON job file safely; raise JobError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"{path}: job config not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JobError(f"{path}: cannot read job config ({e})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_AitkLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise JobError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}"
        ) from None
    if not isinstance(data, dict):
        raise JobError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _find_config(path: Path) -> tuple[Path, Path]:
    """Return (job folder, config file) for a job folder or a job file."""
    if path.is_file():
        return path.parent, path
    if not path.exists():
        raise JobError(f"{path}: no such job folder or job file")
    for name in ("config.yaml", "config.yml", "config.json"):
        if (path / name).is_file():
            return path, path / name
    raise JobError(f"{path}: no config.yaml (or config.json) in the job folder")


def _process(config: dict[str, Any], config_path: Path) -> tuple[str, dict[str, Any]]:
    cfg = config.get("config")
    if not isinstance(cfg, dict):
        raise JobError(f"{config_path}: missing 'config' section (expected job: extension)")
    processes = cfg.get("process")
    if not isinstance(processes, list) or not processes or not isinstance(processes[0], dict):
        raise JobError(f"{config_path}: 'config.process' must be a non-empty list of mappings")
    name = cfg.get("name")
    if not isinstance(name, str) or not name:
        raise JobError(f"{config_path}: 'config.name' is missing")
    return name, processes[0]


# ----------------------------------------------------------------------- models


def reference_model_for(
    family: Family, arch: str, name_or_path: str, override: str | None = None
) -> str:
    """Reference model id of a job of ``family`` (``zimage``, ``zimage_turbo``,
    ``zimage_deturbo``; ``flux``): ``override`` when given, else the family's rule."""
    if override:
        if override not in family.server_models:
            raise JobError(
                f"reference model {override!r} is not a {family.label} model; choose one of "
                f"{', '.join(family.server_models)}"
            )
        return override
    tag = arch.split(":", 1)[1] if ":" in arch else None
    return family.reference_model(tag, name_or_path)


# ------------------------------------------------------------------------ samples


def parse_prompt_flags(prompt: str) -> tuple[str, dict[str, str]]:
    """Split a prompt into its text and ``--flag value`` pairs, as ai-toolkit does.

    The prompt is stripped and split on ``--``; the first piece is the text, each other
    piece starts with the flag name. A literal ``--`` in prompt text is therefore a
    flag boundary. Later flags win.
    """
    pieces = prompt.strip().split("--")
    flags: dict[str, str] = {}
    for piece in pieces[1:]:
        flag = piece.split(" ")[0].strip()
        flags[flag] = piece[len(flag) :].strip()
    return pieces[0].strip(), flags


def replace_trigger(prompt: str, trigger_word: str | None) -> str:
    """ai-toolkit's sampling-time substitution: ``[name]`` and ``[trigger]`` → trigger.

    ai-toolkit substitutes only when the job has a trigger word; without one the tags
    stay in the prompt literally (and the server leaves them too).
    """
    if trigger_word is None:
        return prompt
    return prompt.replace("[name]", trigger_word).replace("[trigger]", trigger_word)


_INT_FLAGS = {
    "w": "width",
    "h": "height",
    "d": "seed",
    "seed": "seed",
    "s": "steps",
    "steps": "steps",
    "frames": "num_frames",
    "num_frames": "num_frames",
    "fps": "fps",
}
#: Prompt flag → the sample field it writes.
_FLAG_FIELDS = {
    "w": "width",
    "h": "height",
    "d": "seed",
    "seed": "seed",
    "s": "sample_steps",
    "steps": "sample_steps",
    "l": "guidance_scale",
    "cfg": "guidance_scale",
    "n": "neg",
    "m": "network_multiplier",
    "frames": "num_frames",
}
_FLOAT_FLAGS = {
    "l": "guidance_scale",
    "cfg": "guidance_scale",
    "m": "network_multiplier",
    "network_multiplier": "network_multiplier",
}


def _as_int(value: Any, what: str, *, strict: bool = False) -> int:
    """An integer setting. ``strict``: a prompt flag, which ai-toolkit reads with int()."""
    if strict:
        try:
            return int(str(value))
        except ValueError:
            raise SampleError(f"{what} must be an integer, got {value!r}") from None
    f = _as_float(value, what, expected="an integer")
    if f != int(f):
        raise SampleError(f"{what} must be an integer, got {value!r}")
    return int(f)


def _as_float(value: Any, what: str, *, expected: str = "a number") -> float:
    """A finite number from YAML/JSON (numbers or numeric strings; not booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SampleError(f"{what} must be {expected}, got {value!r}")
    try:
        f = float(value)
    except ValueError:
        raise SampleError(f"{what} must be {expected}, got {value!r}") from None
    if not math.isfinite(f):
        raise SampleError(f"{what} must be finite, got {value!r}")
    return f


def resolve_samples(
    sample_cfg: dict[str, Any], *, trigger_word: str | None, job_name: str
) -> tuple[SampleSpec, ...]:
    """Resolve every sample item exactly as ai-toolkit's sampler does."""
    raw_items = sample_cfg.get("samples")
    if raw_items is None:
        prompts = sample_cfg.get("prompts") or []
        if not isinstance(prompts, list):
            raise SampleError("'sample.prompts' must be a list of strings")
        raw_items = [{"prompt": p} for p in prompts]
    if not isinstance(raw_items, list):
        raise SampleError("'sample.samples' must be a list")

    def default(key: str) -> Any:
        return sample_cfg.get(key, SAMPLE_DEFAULTS.get(key))

    start_seed = default("seed")
    walk_seed = bool(default("walk_seed"))
    current_seed: Any = start_seed
    specs: list[SampleSpec] = []
    for i, item in enumerate(raw_items):
        if not isinstance(item, dict):
            item = {"prompt": item}
        if walk_seed:
            current_seed = (start_seed if isinstance(start_seed, int) else 0) + i
        if item.get("seed") is not None:
            # An item's own seed also becomes the running seed for later items.
            current_seed = item["seed"]
        raw_prompt = item.get("prompt")
        try:
            specs.append(
                _resolve_item(
                    i,
                    item,
                    sample_cfg,
                    default,
                    current_seed,
                    trigger_word=trigger_word,
                    job_name=job_name,
                )
            )
        except SampleError as e:
            specs.append(
                SampleSpec(
                    index=i,
                    prompt_raw=str(raw_prompt),
                    prompt=str(raw_prompt),
                    prompt_template=str(raw_prompt),
                    negative_prompt="",
                    width=0,
                    height=0,
                    seed=0,
                    guidance_scale=0.0,
                    steps=0,
                    network_multiplier=1.0,
                    explicit_seed=False,
                    error=f"sample {i}: {e}",
                )
            )
    return tuple(specs)


def _resolve_item(
    i: int,
    item: dict[str, Any],
    sample_cfg: dict[str, Any],
    default: Any,
    running_seed: Any,
    *,
    trigger_word: str | None,
    job_name: str,
) -> SampleSpec:
    raw_prompt = item.get("prompt")
    if not isinstance(raw_prompt, str):
        raise SampleError(f"prompt must be a string, got {raw_prompt!r}")
    # [name] is substituted when ai-toolkit loads the config (a no-op on a saved config).
    template_full = raw_prompt.replace("[name]", job_name)
    text, flags = parse_prompt_flags(replace_trigger(template_full, trigger_word))
    template_text, _ = parse_prompt_flags(template_full)

    width = _as_int(item.get("width", default("width")), "width")
    height = _as_int(item.get("height", default("height")), "height")
    neg = item.get("neg", default("neg"))
    neg = "" if neg is None or neg is False else str(neg)
    seed = _as_int(running_seed, "seed")
    explicit_seed = item.get("seed") is not None
    cfg = _as_float(item.get("guidance_scale", default("guidance_scale")), "guidance_scale")
    steps = _as_int(item.get("sample_steps", default("sample_steps")), "sample_steps")
    mult_raw = item.get("network_multiplier", default("network_multiplier"))
    try:
        mult = _as_float(mult_raw, "network_multiplier")
    except SampleError:
        mult = 1.0  # ai-toolkit falls back to 1.0 for an unparsable multiplier
    values: dict[str, Any] = {
        "width": width,
        "height": height,
        "seed": seed,
        "steps": steps,
        "guidance_scale": cfg,
        "network_multiplier": mult,
        "num_frames": _as_int(item.get("num_frames", default("num_frames")), "num_frames"),
        "fps": _as_int(item.get("fps", default("fps")), "fps"),
    }
    for flag, content in flags.items():
        if flag == "n":
            neg = content
        elif flag in _INT_FLAGS:
            values[_INT_FLAGS[flag]] = _as_int(content, f"prompt flag --{flag}", strict=True)
            if _INT_FLAGS[flag] == "seed":
                explicit_seed = True
        elif flag in _FLOAT_FLAGS:
            values[_FLOAT_FLAGS[flag]] = _as_float(content, f"prompt flag --{flag}")
    written = {
        key
        for key in (
            "width",
            "height",
            "seed",
            "guidance_scale",
            "sample_steps",
            "neg",
            "num_frames",
            "fps",
        )
        if key in item or key in sample_cfg
    }
    for flag in flags:
        written.add(_FLAG_FIELDS.get(flag, flag))
    if values["steps"] < 1:
        raise SampleError(f"sample_steps must be >= 1, got {values['steps']}")
    for key in ("num_frames", "fps"):
        if values[key] < 1:
            raise SampleError(f"{key} must be >= 1, got {values[key]}")
    return SampleSpec(
        index=i,
        prompt_raw=raw_prompt,
        prompt=text,
        prompt_template=template_text,
        negative_prompt=neg,
        width=floor8(values["width"]),
        height=floor8(values["height"]),
        seed=values["seed"],
        guidance_scale=values["guidance_scale"],
        steps=values["steps"],
        network_multiplier=values["network_multiplier"],
        explicit_seed=explicit_seed,
        flags=flags,
        written=frozenset(written),
        num_frames=values["num_frames"],
        fps=values["fps"],
    )


# --------------------------------------------------------------------- job folder


def _scan_checkpoints(
    root: Path,
    name: str,
    problems: list[str],
    refused: dict[int, str],
    files: dict[str, int] | None = None,
    expert_suffixes: tuple[str, ...] = (),
) -> tuple[Checkpoint, ...]:
    found: list[Checkpoint] = []
    pairs: dict[str, dict[int, Path]] = {}
    for path in sorted(root.glob("*.safetensors")):
        # A two-expert model saves a pair per checkpoint; its first file stands for it.
        logical, expert = expert_file(path.name, expert_suffixes)
        if expert is not None:
            pairs.setdefault(logical, {})[expert] = path
            if expert != 0:
                continue
        match = CHECKPOINT_RE.match(logical)
        is_final = logical == f"{name}.safetensors"
        if not match and not is_final:
            continue
        if match and match.group("name") != name:
            continue
        metadata: dict[str, str] = {}
        dtype, audit = None, None
        try:
            header = read_header(path)
            metadata = dict(header.metadata)
            dtype, audit = describe_dtype(header), audit_keys(header.tensors)
        except Exception as e:  # a half-written file must not stop the others
            problems.append(f"{path}: unreadable safetensors header ({e})")
        step: int | None = int(match.group("step")) if match else None
        try:
            info = json.loads(metadata.get("training_info", "{}"))
            if step is None and isinstance(info, dict) and isinstance(info.get("step"), int):
                step = info["step"]
        except json.JSONDecodeError:
            pass
        if step is None:
            problems.append(f"{path}: final checkpoint without training_info step; skipped")
            continue
        version = aitk_version_from_metadata(metadata)
        found.append(Checkpoint(path, step, is_final, metadata, version, dtype, audit))
    # The first expert's file -> the second's, for each pair (None: that file is missing).
    second: dict[Path, Path | None] = {}
    for logical, experts in pairs.items():
        if 0 in experts:
            second[experts[0]] = experts.get(1)
        else:
            problems.append(
                f"{root / logical}: only {experts[1].name} of the expert pair is here; skipped"
            )
    found = [
        dataclasses.replace(c, path_2=second[c.path]) if c.path in second else c for c in found
    ]
    # Pickled checkpoints (torch.save) are never read: name them so the step's error says why.
    for path in sorted(root.iterdir()):
        stem, dot, suffix = path.name.rpartition(".")
        match = CHECKPOINT_RE.match(f"{stem}.safetensors")
        if dot and f".{suffix.lower()}" in PICKLED_SUFFIXES and match:
            reason = (
                f"{path}: pickled checkpoint format (.{suffix}) refused, never unpickled; "
                "convert it to .safetensors"
            )
            problems.append(reason)
            refused.setdefault(int(match.group("step")), reason)
    if files is not None:
        files.update({p.name: ckpt.step for ckpt in found for p in ckpt.paths})
    # Final file and a step file of the same step: prefer the step file.
    by_step: dict[int, Checkpoint] = {}
    for ckpt in found:
        if ckpt.step not in by_step or by_step[ckpt.step].is_final:
            by_step[ckpt.step] = ckpt
    return tuple(by_step[s] for s in sorted(by_step))


def expert_file(filename: str, suffixes: tuple[str, ...]) -> tuple[str, int | None]:
    """``filename`` of a LoRA pair's file without its expert suffix, and the expert's
    index in ``suffixes`` (``"job_000000010_low_noise.safetensors"`` ->
    ``("job_000000010.safetensors", 1)``); the name unchanged and None for any other file."""
    stem, dot, ext = filename.rpartition(".")
    for i, suffix in enumerate(suffixes):
        if dot and stem.endswith(suffix):
            return f"{stem[: -len(suffix)]}.{ext}", i
    return filename, None


def _scan_previews(root: Path) -> tuple[Preview, ...]:
    folder = root / "samples"
    if not folder.is_dir():
        return ()
    previews: list[Preview] = []
    # Only the folder itself: ai-toolkit's .tmp/ and .thumbs/ are never previews.
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        match = PREVIEW_RE.match(path.name)
        if not match:
            continue
        previews.append(
            Preview(
                path=path,
                step=int(match.group("step")),
                index=int(match.group("index")),
                ext=match.group("ext").lower(),
            )
        )
    return tuple(previews)


def _flag(section: Any, key: str) -> bool:
    return bool(section.get(key, False)) if isinstance(section, dict) else False


def read_setup(process: dict[str, Any]) -> TrainingSetup:
    """The process keys of :class:`TrainingSetup`, with ai-toolkit's defaults."""
    network = process.get("network") if isinstance(process.get("network"), dict) else {}
    train = process.get("train") if isinstance(process.get("train"), dict) else {}
    model = process.get("model") if isinstance(process.get("model"), dict) else {}
    save = process.get("save") if isinstance(process.get("save"), dict) else {}
    ema = train.get("ema_config") if isinstance(train.get("ema_config"), dict) else {}
    linear, alpha = network.get("linear"), network.get("linear_alpha")
    adapter = model.get("assistant_lora_path")
    return TrainingSetup(
        process_type=str(process.get("type") or "sd_trainer"),
        network=Network(
            type=str(network.get("type") or "lora").lower(),
            linear=int(linear) if isinstance(linear, int | float) else None,
            linear_alpha=float(alpha) if isinstance(alpha, int | float) else None,
        ),
        save_dtype=str(save.get("dtype") or "float16"),
        ema=_flag(ema, "use_ema"),
        assistant_lora_path=str(adapter) if adapter else None,
        low_vram=_flag(model, "low_vram"),
        layer_offloading=_flag(model, "layer_offloading"),
        cache_text_embeddings=_flag(train, "cache_text_embeddings"),
        unload_text_encoder=_flag(train, "unload_text_encoder"),
        skip_first_sample=_flag(train, "skip_first_sample"),
        force_first_sample=_flag(train, "force_first_sample"),
        disable_sampling=_flag(train, "disable_sampling"),
    )


def resolve_adapter(
    written: str, root: Path, training_folder: Any, model_map: ModelMap
) -> tuple[Path | None, str | None]:
    """The local file of a training adapter, as ai-toolkit finds it, or why it is missing.

    ai-toolkit opens ``assistant_lora_path`` relative to the folder it ran in, which holds
    the (relative) ``training_folder`` that holds the job folder; a path that is not a
    file there is a hub path ``org/repo/file``, here looked up in the model map.
    """
    path = Path(written).expanduser()
    looked: list[Path] = []
    if path.is_absolute():
        looked.append(path)
    elif isinstance(training_folder, str) and not Path(training_folder).is_absolute():
        depth = len(Path(training_folder).parts) + 1  # <run dir>/<training_folder>/<name>
        if depth < len(root.parts):
            looked.append(root.parents[depth - 1] / path)
    for candidate in looked:
        if candidate.is_file():
            return candidate.resolve(), None
    mapped = model_map.resolve_hub_file(written)
    if mapped is not None:
        return mapped, None
    repo = written.rpartition("/")[0]
    where = f"not a file at {', '.join(map(str, looked))} and " if looked else ""
    return None, (
        f"model.assistant_lora_path {written}: {where}not mapped to a local file; map it with "
        f"--model-map {written}=/path/to/file.safetensors (or {repo}=/path/to/folder)"
    )


def read_job(
    path: str | Path, *, reference_model: str | None = None, model_map: ModelMap | None = None
) -> Job:
    """Read an ai-toolkit job folder (or a job file given directly).

    ``model_map`` resolves a training adapter given as a hub path (default: the model map
    of the environment and ``pyproject.toml``, see :meth:`parity.model_map.ModelMap.load`).

    Raises
    ------
    JobError
        When the job as a whole is unusable: config missing or unparsable, no
        ``process``, no ``sample`` section, an arch of no family parity knows, or a
        preview option of ai-toolkit parity does not reproduce.
    """
    root, config_path = _find_config(Path(path).resolve())
    config = load_job_file(config_path)
    name, process = _process(config, config_path)

    model = process.get("model") or {}
    if not isinstance(model, dict):
        raise JobError(f"{config_path}: 'model' must be a mapping")
    arch = str(model.get("arch") or "")
    family = family_of_config(model, config_path)
    unreproduced = family.unreproduced_options(model)
    if unreproduced:
        raise JobError(f"{config_path}: {unreproduced[0]}")
    name_or_path = model.get("name_or_path")
    if not isinstance(name_or_path, str) or not name_or_path:
        raise JobError(f"{config_path}: model.name_or_path is missing")
    extras = model.get("extras_name_or_path")

    sample_cfg = process.get("sample")
    if not isinstance(sample_cfg, dict):
        raise JobError(f"{config_path}: no 'sample' section, so the job has no previews to check")

    trigger_word = process.get("trigger_word")
    trigger_word = str(trigger_word) if trigger_word is not None else None
    train = process.get("train") or {}
    train_dtype = str(train.get("dtype", "bf16")) if isinstance(train, dict) else "bf16"

    qtype, qtype_te = family.preview_qtypes(model)
    vae_tiling = family.preview_vae_tiling(model)
    quantization = Quantization(qtype=qtype, qtype_te=qtype_te)

    try:
        samples = resolve_samples(sample_cfg, trigger_word=trigger_word, job_name=name)
    except SampleError as e:
        raise JobError(f"{config_path}: {e}") from None
    if not samples:
        raise JobError(f"{config_path}: the sample section lists no prompts")
    if family.preview_frames is not None:
        samples = tuple(
            dataclasses.replace(s, rendered_frames=family.preview_frames(model, s.num_frames))
            for s in samples
        )

    multipliers = {s.network_multiplier for s in samples if s.error is None}
    problems: list[str] = []
    refused: dict[int, str] = {}
    files: dict[str, int] = {}
    checkpoints = _scan_checkpoints(
        root, name, problems, refused, files, family.expert_lora_suffixes
    )
    previews = _scan_previews(root)
    setup = read_setup(process)
    adapter_path = adapter_problem = None
    if setup.assistant_lora_path:
        adapter_path, adapter_problem = resolve_adapter(
            setup.assistant_lora_path,
            root,
            process.get("training_folder"),
            model_map if model_map is not None else ModelMap.load(),
        )
        if adapter_problem:
            problems.append(adapter_problem)
    return Job(
        root=root,
        config_path=config_path,
        name=name,
        family=family.name,
        arch=arch,
        arch_tag=arch.split(":", 1)[1] if ":" in arch else None,
        reference_model=reference_model_for(family, arch, name_or_path, reference_model),
        name_or_path=name_or_path,
        extras_name_or_path=str(extras) if extras else None,
        trigger_word=trigger_word,
        train_dtype=train_dtype,
        quantization=quantization,
        sample_config=sample_cfg,
        samples=samples,
        # ai-toolkit merges the LoRA for sampling only when every item shares one
        # multiplier and the base is neither quantized nor layer-offloaded.
        merged_lora=len(multipliers) == 1
        and not model.get("quantize")
        and not model.get("layer_offloading"),
        checkpoints=checkpoints,
        previews=previews,
        problems=tuple(problems),
        refused_checkpoints=refused,
        setup=setup,
        adapter_path=adapter_path,
        adapter_problem=adapter_problem,
        checkpoint_files=files,
        vae_tiling=vae_tiling,
    )
