"""The requests a user really sent, bound to the job they were sent for.

A request (``--request``) names its LoRA by path under the LoRA root (the server's
workflows folder): :func:`match_request` finds the step whose checkpoint it names,
:func:`bind_request` resolves and checks it, :func:`bind_requests` binds several at once
(with the images the server returned for them, ``--served``) and :func:`plan_requests`
pairs each request's prompts with that step's previews, by index or by prompt text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from parity.errors import ParityError, UnboundRequestError
from parity.job import Job, outside_path_error, parse_prompt_flags
from parity.server import InferenceRequest, load_request, server_prompts

#: How prompts of a request meet previews: prompt i with preview i, or by prompt text.
Match = Literal["index", "prompt"]
MATCHES: tuple[str, ...] = ("index", "prompt")

#: Extensions of the images a server returned, in the order they are looked for.
SERVED_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")


@dataclass(frozen=True)
class PromptRef:
    """Prompt ``prompt`` of user request ``request`` (its position in
    :attr:`RequestPlan.requests`)."""

    request: int
    prompt: int
    source: str  # the request file

    def to_json(self) -> dict[str, Any]:
        return {"file": self.source, "prompt": self.prompt}


@dataclass(frozen=True)
class UserRequest:
    """A request the user sent, bound to the job step whose checkpoint it names.

    Attributes
    ----------
    source:
        The request file.
    request:
        Its body, validated as the server validates it.
    step:
        The step whose checkpoint ``loras[0].path`` names.
    lora_path:
        ``loras[0].path`` resolved under the LoRA root, as the server resolves it.
    lora_root:
        The LoRA root (the server's workflows folder).
    number:
        Its position among the ``--request`` options.
    served:
        Folder of the images the server returned for it (``<prompt index>.<ext>``).
    """

    source: Path
    request: InferenceRequest
    step: int
    lora_path: Path
    lora_root: Path
    number: int = 0
    served: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.source),
            "step": self.step,
            "lora": self.request.loras[0].path,
            "lora_resolved": str(self.lora_path),
            "prompts": len(self.request.prompts),
            "served": str(self.served) if self.served else None,
        }


def default_lora_root(job: Job) -> Path:
    """The server's workflows folder for a job: its training folder (the job's parent),
    where ``<job name>/<file>.safetensors`` names a checkpoint."""
    return job.root.parent


def resolve_lora_path(path: str, lora_root: Path) -> Path:
    """Where the server finds a request's LoRA: ``path`` under ``lora_root`` (the
    server joins them, so an absolute path stays as it is)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(lora_root) / candidate


def match_request(job: Job, request: InferenceRequest, lora_root: Path) -> int | None:
    """The step of ``job`` whose checkpoint ``request.loras[0]`` names, or None.

    A LoRA names a checkpoint when it resolves (under ``lora_root``) to one of the job's
    checkpoint files, or when it is ``<job name>/<file>`` under the root and ``<file>``
    is the name of one (a copy in the server's own workflows folder).
    """
    if not request.loras:
        return None
    path = resolve_lora_path(request.loras[0].path, lora_root)
    if path.resolve().parent == job.root.resolve() and path.name in job.checkpoint_files:
        return job.checkpoint_files[path.name]
    try:
        relative = path.resolve().relative_to(Path(lora_root).resolve())
    except ValueError:
        return None
    if relative.parts[:1] == (job.name,) and len(relative.parts) == 2:
        return job.checkpoint_files.get(relative.parts[1])
    return None


def checkpoint_names(job: Job, lora_root: Path) -> list[str]:
    """The job's checkpoint files as a request names them under ``lora_root``."""
    names = []
    for name in sorted(job.checkpoint_files, key=lambda n: (job.checkpoint_files[n], n)):
        path = job.root / name
        try:
            names.append(path.relative_to(Path(lora_root).resolve()).as_posix())
        except ValueError:
            names.append(str(path))
    return names


def bind_request(
    job: Job,
    source: Path,
    request: InferenceRequest,
    *,
    lora_root: Path | None = None,
    allow_outside_paths: bool = False,
    served: Path | None = None,
    number: int = 0,
) -> UserRequest | None:
    """``request`` (read from ``source``) bound to the step of ``job`` it names.

    Returns None when its LoRA names no checkpoint of ``job`` (it may name another job's).

    Raises
    ------
    ParityError
        The LoRA resolves outside the LoRA root (unless ``allow_outside_paths``), the
        request is for another model than the job's, or ``served`` is not a folder.
    """
    root = Path(lora_root) if lora_root is not None else default_lora_root(job)
    if not request.loras:
        raise ParityError(f"{source}: the request names no LoRA (the server requires one)")
    path = resolve_lora_path(request.loras[0].path, root)
    if not allow_outside_paths:
        error = outside_path_error(path, root, "request LoRA path", "the LoRA root")
        if error:
            raise ParityError(f"{source}: {error}")
    step = match_request(job, request, root)
    if step is None:
        return None
    if request.model != job.reference_model:
        raise ParityError(
            f"{source}: the request asks the server for model {request.model!r}, but job "
            f"{job.name} trained on {job.name_or_path} (reference model "
            f"{job.reference_model!r}); the server would apply the LoRA to another base "
            f"model. Send model {job.reference_model!r}, or pass --model if the job's base "
            "really is that"
        )
    if served is not None and not Path(served).is_dir():
        raise ParityError(f"{served}: --served needs a folder of <prompt index>.png|jpg images")
    return UserRequest(
        source=Path(source),
        request=request,
        step=step,
        lora_path=path,
        lora_root=root,
        number=number,
        served=Path(served) if served is not None else None,
    )


def check_served_pairs(requests: int, served: Sequence[Path]) -> None:
    """``--served`` folders pair with ``--request`` files in order: as many, or none."""
    if served and len(served) != requests:
        raise ParityError(
            f"--served pairs with --request in order: got {len(served)} --served for "
            f"{requests} --request"
        )


def bind_requests(
    jobs: Sequence[Job],
    paths: Sequence[Path],
    *,
    served: Sequence[Path] = (),
    lora_root: Path | None = None,
    allow_outside_paths: bool = False,
    jobs_label: str = "the jobs of this run",
) -> dict[str, list[UserRequest]]:
    """The request files at ``paths`` read and each bound to the one of ``jobs`` whose
    checkpoint its LoRA names: job name -> its requests, in order (``number`` counts
    within the job). ``served[k]`` is the folder of images the server returned for
    ``paths[k]``. Every front door (one job, many, the pytest plugin) binds with this;
    ``jobs_label`` is how its messages name several ``jobs``.

    Raises
    ------
    UnboundRequestError
        A request names none of the jobs' checkpoints (under ``lora_root``, default each
        job's training folder).
    ParityError
        A request that cannot be read or is refused by :func:`bind_request`; ``served``
        without requests or not one per request.
    """
    if served and not paths:
        raise ParityError("--served needs the --request it answers (paired in order)")
    check_served_pairs(len(paths), served)
    out: dict[str, list[UserRequest]] = {}
    for k, source in enumerate(paths):
        request = load_request(source)
        for job in jobs:
            mine = out.setdefault(job.name, [])
            user = bind_request(
                job,
                Path(source),
                request,
                lora_root=lora_root,
                allow_outside_paths=allow_outside_paths,
                served=served[k] if served else None,
                number=len(mine),
            )
            if user is not None:
                mine.append(user)
                break
        else:
            raise UnboundRequestError(
                _names_no_job(Path(source), request, jobs, lora_root, jobs_label)
            )
    return {name: bound for name, bound in out.items() if bound}


def _names_no_job(
    source: Path,
    request: InferenceRequest,
    jobs: Sequence[Job],
    lora_root: Path | None,
    jobs_label: str,
) -> str:
    lora = request.loras[0].path if request.loras else None
    if len(jobs) == 1:
        [job] = jobs
        root = Path(lora_root) if lora_root is not None else default_lora_root(job)
        have = ", ".join(checkpoint_names(job, root)) or "none"
        return (
            f"{source}: loras[0].path {lora!r} names no checkpoint of job {job.name} under "
            f"the LoRA root {root}; the job's checkpoints: {have} (set --lora-root to the "
            "server's workflows folder)"
        )
    names = ", ".join(job.name for job in jobs) or "none"
    return (
        f"{source}: loras[0].path {lora!r} names no checkpoint of {jobs_label} "
        f"({names}); set --lora-root to the server's workflows folder"
    )


def served_image(folder: Path, prompt: int) -> Path | None:
    """The image a server returned for prompt ``prompt``: ``<prompt>.<ext>`` in ``folder``."""
    for ext in SERVED_EXTS:
        for name in (f"{prompt}.{ext}", f"{prompt}.{ext.upper()}"):
            if (folder / name).is_file():
                return folder / name
    return None


def _text_key(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class RequestPlan:
    """How user requests meet the previews of their steps.

    Attributes
    ----------
    requests:
        The bound requests, in ``--request`` order.
    assignment:
        (step, preview index) -> the request prompt its reference side comes from.
    unmatched:
        (step, preview index) -> why no request prompt is compared with it.
    extra_prompts:
        Request prompts compared with no preview (JSON-ready, for run.json).
    served_missing:
        ``--served`` images not found, one line each.
    """

    requests: tuple[UserRequest, ...] = ()
    assignment: Mapping[tuple[int, int], PromptRef] = field(default_factory=dict)
    unmatched: Mapping[tuple[int, int], str] = field(default_factory=dict)
    extra_prompts: tuple[dict[str, Any], ...] = ()
    served_missing: tuple[str, ...] = ()

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.requests})

    def warnings(self) -> list[str]:
        lines = [
            f"{e['file']} prompt {e['prompt']}: {e['reason']}; it is not compared"
            for e in self.extra_prompts
        ]
        return lines + list(self.served_missing)

    def served_for(self, ref: PromptRef) -> Path | None:
        folder = self.requests[ref.request].served
        return served_image(folder, ref.prompt) if folder is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": [r.to_json() for r in self.requests],
            "unmatched_prompts": list(self.extra_prompts),
            "unmatched_previews": [
                {"step": step, "index": index, "reason": reason}
                for (step, index), reason in sorted(self.unmatched.items())
            ],
            "served_missing": list(self.served_missing),
        }


@dataclass
class _Pairing:
    """Prompts paired with previews so far: what :class:`RequestPlan` is made of."""

    assignment: dict[tuple[int, int], PromptRef] = field(default_factory=dict)
    unmatched: dict[tuple[int, int], str] = field(default_factory=dict)
    extras: list[dict[str, Any]] = field(default_factory=list)
    used: set[tuple[int, int]] = field(default_factory=set)

    def pair(self, step: int, index: int, ref: PromptRef) -> None:
        self.assignment[(step, index)] = ref
        self.used.add((ref.request, ref.prompt))

    def leftover(self, ref: PromptRef, text: str, reason: str) -> None:
        """A prompt no preview took (reported, not an error)."""
        if (ref.request, ref.prompt) not in self.used:
            extra = {"file": ref.source, "prompt": ref.prompt, "text": text, "reason": reason}
            self.extras.append(extra)


def plan_requests(job: Job, requests: Sequence[UserRequest], match: Match = "index") -> RequestPlan:
    """Pair the prompts of ``requests`` with the previews of the steps they name.

    ``match="index"``: prompt i of a step's request with preview i of that step (one
    request per step). ``match="prompt"``: each preview with the first unused prompt,
    of any request of its step, whose text reads the same once resolved (the server's
    ``[trigger]`` substitution, then ai-toolkit's ``--flag`` split, whitespace folded).
    Previews left without a prompt and prompts left without a preview are reported.
    """
    if match not in MATCHES:
        raise ParityError(f"--match takes {' or '.join(MATCHES)}; got {match!r}")
    indices = _preview_indices(job)
    by_step: dict[int, list[tuple[int, UserRequest]]] = {}
    for k, user in enumerate(requests):
        by_step.setdefault(user.step, []).append((k, user))
    pairing = _Pairing()
    for step, users in sorted(by_step.items()):
        previews = sorted(indices.get(step, []))
        if not previews:
            raise ParityError(
                f"{users[0][1].source}: names the checkpoint of step {step}, which has no "
                f"previews in {job.root / 'samples'}; steps with previews: {job.steps}"
            )
        prompts = [
            (PromptRef(k, i, str(user.source)), sp.prompt)
            for k, user in users
            for i, sp in enumerate(server_prompts(user.request))
        ]
        if match == "index":
            _pair_by_index(pairing, step, users, previews, prompts)
        else:
            _pair_by_prompt(pairing, job, step, users, previews, prompts)
    return RequestPlan(
        requests=tuple(requests),
        assignment=pairing.assignment,
        unmatched=pairing.unmatched,
        extra_prompts=tuple(pairing.extras),
        served_missing=_served_missing(requests, pairing.assignment),
    )


def _preview_indices(job: Job) -> dict[int, list[int]]:
    """Step -> the indices of its previews, in the order they were found."""
    indices: dict[int, list[int]] = {}
    for p in job.previews:
        indices.setdefault(p.step, [])
        if p.index not in indices[p.step]:
            indices[p.step].append(p.index)
    return indices


def _pair_by_index(
    pairing: _Pairing,
    step: int,
    users: list[tuple[int, UserRequest]],
    previews: list[int],
    prompts: list[tuple[PromptRef, str]],
) -> None:
    """Prompt i of the step's one request with preview i."""
    if len(users) > 1:
        names = ", ".join(str(u.source) for _, u in users)
        raise ParityError(
            f"{names} all name the checkpoint of step {step}; prompt i is compared "
            "with preview i, so a step takes one request: pass --match prompt to "
            "match previews by prompt text"
        )
    k, user = users[0]
    count = len(user.request.prompts)
    for index in previews:
        if index < count:
            pairing.pair(step, index, PromptRef(k, index, str(user.source)))
        else:
            pairing.unmatched[(step, index)] = (
                f"no prompt {index} in {user.source} ({count} prompts; prompt i is "
                f"compared with preview i of step {step}, --match prompt matches by "
                "text)"
            )
    for ref, text in prompts:
        pairing.leftover(ref, text, f"step {step} has no preview {ref.prompt}")


def _pair_by_prompt(
    pairing: _Pairing,
    job: Job,
    step: int,
    users: list[tuple[int, UserRequest]],
    previews: list[int],
    prompts: list[tuple[PromptRef, str]],
) -> None:
    """Each preview with the first unused prompt of the step whose resolved text is its
    sample's prompt."""
    keys = [(ref, text, _text_key(parse_prompt_flags(text)[0])) for ref, text in prompts]
    for index in previews:
        sample = job.samples[index] if index < len(job.samples) else None
        if sample is None or sample.error:
            pairing.unmatched[(step, index)] = (
                f"preview {index} has no usable sample to match by text"
            )
            continue
        want = _text_key(sample.prompt)
        found = next(
            (
                ref
                for ref, _text, key in keys
                if key == want and (ref.request, ref.prompt) not in pairing.used
            ),
            None,
        )
        if found is None:
            sources = ", ".join(str(u.source) for _, u in users)
            pairing.unmatched[(step, index)] = (
                f"no prompt of {sources} reads {sample.prompt!r} once resolved "
                "([trigger] substituted, --flags removed)"
            )
            continue
        pairing.pair(step, index, found)
    for ref, text, _key in keys:
        pairing.leftover(ref, text, f"no preview of step {step} has this prompt")


def _served_missing(
    requests: Sequence[UserRequest], assignment: Mapping[tuple[int, int], PromptRef]
) -> tuple[str, ...]:
    """A line per paired prompt whose request has --served images but none for it."""
    missing = []
    for ref in assignment.values():
        folder = requests[ref.request].served
        if folder is not None and served_image(folder, ref.prompt) is None:
            missing.append(
                f"{folder}: no served image for prompt {ref.prompt} of {ref.source} "
                f"({ref.prompt}.png|jpg|jpeg|webp)"
            )
    return tuple(sorted(missing))
