"""Renders without judging: a job's previews the way ai-toolkit rendered them
(:func:`render_previews`, ``parity preview``) and a request the way the reference server
renders it (:func:`render_request`, ``parity render``).

Each writes its images and ``effective.json`` (every image with the settings it was
rendered with, or why it could not be) into one folder, and says what it did as a
:class:`Renders` record; what a user should see on the way (a render that failed, a size
the server floored, a LoRA not fully applied) goes to ``warn`` as one line each.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import LoraError, ModelError, ParityError
from parity.families import SERVER_MODELS, family_of_model
from parity.job import Job, outside_path_error
from parity.model_map import ModelMap
from parity.plan import plan_cases, resolve_lora_path
from parity.plan.sides import reference_settings
from parity.render.models import checkpoint_scheduler, resolve_reference_model, validate_checkpoint
from parity.results import atomic_write_text, render_path, save_render
from parity.run.runner import progress
from parity.server import load_request
from parity.settings import Dtype

if TYPE_CHECKING:
    from parity.render.engine import RenderEngine

log = logging.getLogger(__name__)

#: The file of a render folder that records every image's settings.
EFFECTIVE_FILE = "effective.json"


def _log_warning(line: str) -> None:
    log.warning("%s", line)


@dataclass(frozen=True)
class Renders:
    """What one ``parity preview`` or ``parity render`` made.

    Attributes
    ----------
    out:
        The folder of the images and ``effective.json``.
    entries:
        ``effective.json``'s entries, one per image: its settings and file, or its error.
    what:
        What was rendered, in words (``"previews"``, ``"images"``).
    """

    out: Path
    entries: tuple[dict[str, Any], ...]
    what: str

    @property
    def failures(self) -> int:
        """Images that could not be rendered."""
        return sum(1 for entry in self.entries if "error" in entry)

    @property
    def rendered(self) -> int:
        return len(self.entries) - self.failures

    @property
    def exit_code(self) -> int:
        """0 when every image was rendered, else 1."""
        return 1 if self.failures else 0


def _finish(out: Path, entries: list[dict[str, Any]], what: str) -> Renders:
    atomic_write_text(out / EFFECTIVE_FILE, json.dumps(entries, indent=2))
    return Renders(out, tuple(entries), what)


def render_previews(
    job: Job,
    engine: RenderEngine,
    out: str | Path,
    *,
    steps: Sequence[int],
    reference_dtype: Dtype | None = None,
    allow_outside_paths: bool = False,
    warn: Callable[[str], None] = _log_warning,
) -> Renders:
    """Render every preview of ``steps`` the way ai-toolkit did, into
    ``out/<step>/<index>.png`` (a video: ``.webp``, lossless and animated).

    A preview that cannot be rendered is an entry with its error (and a ``warn`` line);
    a model that cannot be used raises.
    """
    out = Path(out)
    cases = plan_cases(
        job,
        list(steps),
        device=engine.device,
        checkpoint_scheduler=engine.checkpoint_scheduler,
        reference_dtype=reference_dtype,
        allow_outside_paths=allow_outside_paths,
        check_previews=False,  # the previews are not read: their pixels are rendered anew
    )
    entries: list[dict[str, Any]] = []
    for case in progress(cases, None, desc="preview"):
        entry: dict[str, Any] = {"step": case.step, "index": case.index}
        try:
            if case.pair is None:
                raise ParityError(case.error or "no settings")
            settings = case.pair.preview
            result = engine.render(settings)
            name = render_path(f"{case.step}/{case.index}", video=settings.video)
            save_render(result.frames, out / name, fps=settings.fps)
            entry.update(image=name, settings=settings.to_dict())
        except ModelError:
            raise
        except ParityError as e:
            entry["error"] = str(e)
            warn(f"error: step {case.step} index {case.index}: {e}")
        entries.append(entry)
    return _finish(out, entries, "previews")


def render_request(
    request_file: str | Path,
    model_map: ModelMap,
    out: str | Path,
    *,
    base_model: str | None = None,
    lora_root: str | Path | None = None,
    allow_outside_paths: bool = False,
    device: str = "cpu",
    dtype: Dtype | None = None,
    server_diffusers: str | None = None,
    warn: Callable[[str], None] = _log_warning,
) -> Renders:
    """Render every prompt of the request in ``request_file`` the way the reference
    server does, into ``out/<i>.png`` (a video: ``.webp``, lossless and animated).

    ``base_model`` stands for the checkpoint the request's model loads its transformer
    from; ``lora_root`` plays the server's workflows folder, under which the request's
    LoRA paths resolve (default: the request's folder). What the server does to a prompt
    that a user should know (a size floored to the model's divisor, a LoRA not fully
    applied) is on its entry as ``warning``.

    Raises
    ------
    ParityError
        The request, its model or a LoRA cannot be used (the message names the file).
    """
    request_path = Path(request_file)
    request = load_request(request_path)
    server = SERVER_MODELS[request.model]
    mapping = model_map.with_base_model(server.transformer_hub_id, base_model)
    source = resolve_reference_model(request.model, mapping)
    family = family_of_model(request.model)
    validate_checkpoint(source, family)
    root = Path(lora_root) if lora_root else request_path.parent
    lora_paths = [
        str(_confined(resolve_lora_path(lora.path, root), root, allow_outside_paths))
        for lora in request.loras
    ]
    from parity.render.engine import RenderEngine

    engine = RenderEngine(source, device=device, family=family)
    for path in lora_paths:  # a LoRA problem is found before the model loads
        try:
            engine.lora(path)
        except LoraError as e:
            raise LoraError(f"{request_path}: {e}") from None
    scheduler = checkpoint_scheduler(source)
    out = Path(out)
    entries: list[dict[str, Any]] = []
    for i in progress(list(range(len(request.prompts))), None, desc="render"):
        settings, server_prompt = reference_settings(
            request,
            i,
            lora_paths=lora_paths,
            device=device,
            checkpoint_scheduler=scheduler,
            dtype=dtype,
            server_diffusers=server_diffusers,
        )
        entry: dict[str, Any] = {"index": i, "settings": settings.to_dict()}
        if server_prompt.size_note:
            entry["warning"] = server_prompt.size_note
        try:
            result = engine.render(settings)
            if result.lora_not_applied:
                entry["warning"] = (
                    f"LoRA not fully applied: {result.lora_modules_applied} of "
                    f"{result.lora_modules_in_file} modules of {settings.lora.path} match the "
                    "transformer"
                )
                warn(f"warning: prompt {i}: {entry['warning']}")
            name = render_path(str(i), video=settings.video)
            save_render(result.frames, out / name, fps=settings.fps)
            entry["image"] = name
        except ModelError:
            raise
        except ParityError as e:
            entry["error"] = str(e)
            warn(f"error: prompt {i}: {e}")
        entries.append(entry)
    return _finish(out, entries, "images")


def _confined(path: Path, root: Path, allow_outside: bool) -> Path:
    """``path`` resolved, refused when outside the LoRA root unless ``allow_outside``."""
    error = None if allow_outside else outside_path_error(path, root, "LoRA path", "the LoRA root")
    if error:
        raise ParityError(error)
    return path.resolve()
