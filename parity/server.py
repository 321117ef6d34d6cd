"""The reference inference server's API: its request, and what it does with one.

The rules the server applies to every model (runcomfy ai-toolkit-inference, ``src/api``,
``src/schemas``, ``src/tasks/executor.py`` and ``src/pipelines/base.py``): the request's
bounds, the floor of each size to the model's ``resolution_divisor``, seed ``42 + i``
when absent, 1024 px when no size is given, one LoRA scale per request (the first
``network_multiplier`` given), its dtype rule and output codec. Each model's own defaults
and checkpoints are its family's (:class:`parity.family.ServerModel`, collected in
:data:`parity.families.SERVER_MODELS`). The request schema below mirrors the server's
validation (field names and bounds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from parity.errors import RequestError
from parity.families import SERVER_MODELS
from parity.settings import Dtype

log = logging.getLogger(__name__)

#: Seed of prompt i without a seed: ``DEFAULT_SEED + i``.
DEFAULT_SEED = 42
#: Size of a prompt without width/height, px.
DEFAULT_SIZE = 1024
#: JPEG quality of the images the server returns.
OUTPUT_JPEG_QUALITY = 95

#: Bounds of the request schema (inclusive).
SIZE_BOUNDS = (64, 4096)  # px
GUIDANCE_BOUNDS = (0.0, 20.0)
STEPS_BOUNDS = (1, 150)
LORA_SCALE_BOUNDS = (-2.0, 2.0)
FRAMES_BOUNDS = (1, 1000)
FPS_BOUNDS = (1, 120)
#: How a video model's frames are returned: an animated WebP, ``int(1000 / fps)`` ms a
#: frame, looping, at Pillow's default (lossy) quality (``libs/image_utils.py``).
OUTPUT_VIDEO_FORMAT = "WEBP"


def clamp(value: float, bounds: tuple[float, float]) -> float:
    """``value`` limited to ``bounds`` (what a request may carry)."""
    low, high = bounds
    return max(low, min(high, value))


def server_dtype(device: str, *, bf16_supported: bool = True) -> Dtype:
    """The server's dtype rule: bf16 on CUDA when supported, else fp16; fp32 on CPU."""
    if device.startswith("cuda"):
        return "bfloat16" if bf16_supported else "float16"
    return "float32"


class LoraItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    path: str
    transformer: Literal["low", "high"] | None = None
    network_multiplier: float | None = Field(
        default=None, ge=LORA_SCALE_BOUNDS[0], le=LORA_SCALE_BOUNDS[1]
    )


class PromptItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    trigger_word: str | None = None
    width: int | None = Field(default=None, ge=SIZE_BOUNDS[0], le=SIZE_BOUNDS[1])
    height: int | None = Field(default=None, ge=SIZE_BOUNDS[0], le=SIZE_BOUNDS[1])
    guidance_scale: float | None = Field(default=None, ge=GUIDANCE_BOUNDS[0], le=GUIDANCE_BOUNDS[1])
    sample_steps: int | None = Field(default=None, ge=STEPS_BOUNDS[0], le=STEPS_BOUNDS[1])
    neg: str | None = None
    seed: int | None = Field(default=None, ge=-1)
    sampler: str | None = None
    num_frames: int | None = Field(default=None, ge=FRAMES_BOUNDS[0], le=FRAMES_BOUNDS[1])
    fps: int | None = Field(default=None, ge=FPS_BOUNDS[0], le=FPS_BOUNDS[1])


class InferenceRequest(BaseModel):
    """A request to the reference server (``POST /v1/inference`` body ``inputs``)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    loras: list[LoraItem]
    trigger_word: str | None = None
    prompts: list[PromptItem]

    @model_validator(mode="after")
    def _check(self) -> InferenceRequest:
        if not self.prompts:
            raise ValueError("At least one prompt must be provided in 'prompts'")
        if self.model not in SERVER_MODELS:
            raise ValueError(
                f"model {self.model!r} is not a model parity renders; known: "
                f"{', '.join(SERVER_MODELS)}"
            )
        return self

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def request_number(value: float) -> float | int:
    """A number as a request carries it: integral values as ints (``1`` not ``1.0``)."""
    return int(value) if float(value).is_integer() else value


def load_request(path: str | Path) -> InferenceRequest:
    """Read and validate a request JSON file; RequestError names the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RequestError(f"{path}: request file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"{path}: not a JSON request ({e})") from None
    # The server's task envelope wraps the body in "inputs"; accept both.
    if isinstance(data, dict) and "inputs" in data and isinstance(data["inputs"], dict):
        data = data["inputs"]
    return validate_request(data, source=str(path))


def validate_request(data: object, *, source: str = "request") -> InferenceRequest:
    """Validate a request body as the server does: its schema, then its API rules.

    The API answers 400 for a request with no LoRA (``LORA_FILE_REQUIRED``) or
    with more than one (``SINGLE_LORA_ONLY``), and refuses the MoE ``transformer``
    selector on models that have a single transformer. A model with two experts takes
    one LoRA per expert, each naming its ``transformer`` (``MOE_FORMAT_REQUIRED``,
    ``SINGLE_MOE_CONFIG_ONLY``).
    """
    try:
        request = InferenceRequest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in e.errors()
        )
        raise RequestError(f"{source}: breaks the server's request schema: {problems}") from None
    if not request.loras:
        raise RequestError(
            f"{source}: the server requires one LoRA for {request.model} (LORA_FILE_REQUIRED)"
        )
    if SERVER_MODELS[request.model].expert_loras:
        experts = [lo.transformer for lo in request.loras]
        if None in experts:
            raise RequestError(
                f"{source}: {request.model} takes its LoRAs with transformer=high or "
                "transformer=low on each (MOE_FORMAT_REQUIRED)"
            )
        if len(experts) > 2 or len(set(experts)) != len(experts):
            raise RequestError(
                f"{source}: {request.model} takes one high and one low LoRA at most "
                f"(SINGLE_MOE_CONFIG_ONLY); got {experts}"
            )
        return request
    if len(request.loras) > 1:
        raise RequestError(
            f"{source}: the server takes a single LoRA for {request.model} (SINGLE_LORA_ONLY); "
            f"got {len(request.loras)}"
        )
    if request.loras[0].transformer is not None:
        raise RequestError(
            f"{source}: 'transformer' selects a MoE expert; {request.model} has none"
        )
    return request


@dataclass(frozen=True)
class ServerPrompt:
    """The server's effective settings for one prompt of a request."""

    index: int
    prompt: str
    negative_prompt: str
    width: int
    height: int
    requested_width: int
    requested_height: int
    steps: int
    guidance_scale: float
    seed: int
    lora_scale: float
    random_seed: bool
    #: The model's size rule: width and height floored to a multiple of this, px.
    resolution_divisor: int
    #: A video model's frames (before its pipeline's rule) and frame rate; None for an
    #: image model.
    num_frames: int | None = None
    fps: int | None = None
    #: A two-expert model's second LoRA scale (``transformer: low``); None otherwise.
    lora_scale_2: float | None = None

    @property
    def size_note(self) -> str | None:
        """What the server's size rule did to the requested size (None: nothing): the
        one wording of it, with the model's own divisor."""
        if (self.width, self.height) == (self.requested_width, self.requested_height):
            return None
        return (
            f"{self.requested_width}x{self.requested_height} floored to "
            f"{self.width}x{self.height} (multiple of {self.resolution_divisor})"
        )


def server_lora_scale(request: InferenceRequest) -> float:
    """One LoRA scale per request: the first ``network_multiplier`` given, else 1.0."""
    given = [lo.network_multiplier for lo in request.loras if lo.network_multiplier is not None]
    if len(set(given)) > 1:
        log.warning(
            "request gives several LoRA scales %s; the server applies only the first", given
        )
    return given[0] if given else SERVER_MODELS[request.model].default_network_multiplier


def expert_lora_scales(request: InferenceRequest) -> tuple[float, float]:
    """A two-expert model's LoRA scales, high then low: each item's own
    ``network_multiplier``, 1.0 where it gives none (diffusers' ``set_adapters`` default)."""
    scales = {lo.transformer: lo.network_multiplier for lo in request.loras}
    high, low = scales.get("high"), scales.get("low")
    return (1.0 if high is None else high, 1.0 if low is None else low)


def server_prompts(request: InferenceRequest) -> list[ServerPrompt]:
    """Effective settings of each prompt, as the server computes them."""
    model = SERVER_MODELS[request.model]
    scale_2 = None
    if model.expert_loras:
        scale, scale_2 = expert_lora_scales(request)
    else:
        scale = server_lora_scale(request)
    out = []
    for i, item in enumerate(request.prompts):
        trigger = item.trigger_word or request.trigger_word
        prompt = item.prompt.replace("[trigger]", trigger) if trigger else item.prompt
        width = item.width if item.width is not None else DEFAULT_SIZE
        height = item.height if item.height is not None else DEFAULT_SIZE
        div = model.resolution_divisor
        seed = item.seed if item.seed is not None else DEFAULT_SEED + i
        out.append(
            ServerPrompt(
                index=i,
                prompt=prompt,
                negative_prompt=item.neg if item.neg is not None else "",
                width=(width // div) * div,
                height=(height // div) * div,
                requested_width=width,
                requested_height=height,
                steps=item.sample_steps if item.sample_steps is not None else model.default_steps,
                guidance_scale=(
                    item.guidance_scale
                    if item.guidance_scale is not None
                    else model.default_guidance
                ),
                seed=seed,
                lora_scale=scale,
                random_seed=seed < 0,
                resolution_divisor=div,
                num_frames=(
                    (item.num_frames if item.num_frames is not None else model.default_num_frames)
                    if model.video
                    else None
                ),
                fps=(item.fps if item.fps is not None else model.default_fps)
                if model.video
                else None,
                lora_scale_2=scale_2,
            )
        )
    return out
