"""Model maps: which local folder stands for a hub id.

Jobs and the reference pipelines name their checkpoints by hub id
(``Tongyi-MAI/Z-Image-Turbo``); parity runs offline, so a :class:`ModelMap` maps those
ids, and hub paths of single files such as a training adapter, to local diffusers
folders and files. Its sources, highest precedence first: ``--base-model``,
``--model-map ID=PATH`` flags, the ``PARITY_MODEL_MAP`` environment variable, and a
``[tool.parity.models]`` table of ``pyproject.toml``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import ModelMapError, ModelNotFoundError, NotZImageCheckpointError

#: Environment variable holding ``ID=PATH[,ID=PATH...]``.
MODEL_MAP_ENV = "PARITY_MODEL_MAP"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class _FromEnvironment:
    """Default marker: read the value when :meth:`ModelMap.load` runs, not at import."""

    def __repr__(self) -> str:
        return "<from environment>"


FROM_ENVIRONMENT: Any = _FromEnvironment()


@dataclass(frozen=True)
class ModelMap:
    """Hub id -> local diffusers folder.

    Attributes
    ----------
    entries:
        Absolute folder per hub id.
    origins:
        Where each entry came from (for error messages), e.g.
        ``"--model-map flag"`` or ``"/repo/pyproject.toml [tool.parity.models]"``.
    """

    entries: Mapping[str, Path] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        cli: Sequence[str] = (),
        *,
        env: str | None = FROM_ENVIRONMENT,
        pyproject: Path | None = FROM_ENVIRONMENT,
        base_model: tuple[str, str] | None = None,
    ) -> ModelMap:
        """Collect the map from all its sources.

        Precedence, highest first (a higher source overrides the same id below it):

        1. ``base_model``: the ``--base-model`` shortcut, ``(hub id, folder)``.
        2. ``cli``: ``--model-map ID=PATH`` flag values, later flags winning.
        3. ``env``: the ``PARITY_MODEL_MAP`` environment variable,
           ``ID=PATH[,ID=PATH...]`` (comma separated).
        4. ``pyproject``: the ``[tool.parity.models]`` table of a pyproject.toml,
           ``"ID" = "PATH"``; relative paths are resolved against the pyproject's folder.

        Relative paths of the other sources are resolved against the current working
        directory. Folders are not checked here; :meth:`resolve` checks the ones used.

        Parameters
        ----------
        cli:
            ``ID=PATH`` strings.
        env:
            Value of the environment variable; by default read from ``PARITY_MODEL_MAP``
            at call time. None ignores the environment.
        pyproject:
            pyproject.toml to read, when it exists; by default ``./pyproject.toml``.
            None reads none.
        base_model:
            ``(hub id, folder)`` or None.

        Raises
        ------
        ModelMapError
            An entry is malformed (no ``=``, empty id or path, a non-string value, an
            unreadable pyproject.toml); the message names the source.
        """
        if env is FROM_ENVIRONMENT:
            env = os.environ.get(MODEL_MAP_ENV)
        if pyproject is FROM_ENVIRONMENT:
            candidate = Path.cwd() / "pyproject.toml"
            pyproject = candidate if candidate.is_file() else None

        entries: dict[str, Path] = {}
        origins: dict[str, str] = {}

        def put(items: list[tuple[str, Path]], origin: str) -> None:
            for key, path in items:
                entries[key] = path
                origins[key] = origin

        # A pyproject.toml that does not exist is simply not a source.
        if pyproject is not None and Path(pyproject).is_file():
            put(_read_pyproject(Path(pyproject)), f"{pyproject} [tool.parity.models]")
        if env:
            origin = f"{MODEL_MAP_ENV} environment variable"
            put([_parse_pair(p, origin) for p in env.split(",") if p.strip()], origin)
        for value in cli:
            put([_parse_pair(value, "--model-map flag")], "--model-map flag")
        if base_model is not None:
            key, path = base_model
            put([_parse_pair(f"{key}={path}", "--base-model")], "--base-model")
        return cls(entries=entries, origins=origins)

    def with_base_model(self, hub_id: str, folder: str | None) -> ModelMap:
        """This map with ``hub_id`` mapped to ``folder`` above every other source (the
        ``--base-model`` shortcut, applied once the job's ``name_or_path`` is known);
        unchanged when ``folder`` is None."""
        if not folder:
            return self
        key, path = _parse_pair(f"{hub_id}={folder}", "--base-model")
        return ModelMap({**self.entries, key: path}, {**self.origins, key: "--base-model"})

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def resolve(self, id_or_path: str) -> str:
        """Return the folder or hub id to load ``id_or_path`` from.

        A mapped id gives its folder (which must exist); an existing local folder gives
        its absolute path; anything that looks like a hub id is returned unchanged.

        Raises
        ------
        ModelNotFoundError
            The mapped folder does not exist (the message names the id, the folder and
            the source of the mapping), or ``id_or_path`` looks like a local path that
            does not exist.
        """
        if id_or_path in self.entries:
            folder = self.entries[id_or_path]
            if not folder.is_dir():
                raise ModelNotFoundError(
                    f"model {id_or_path!r} is mapped to {folder}, which is not a folder "
                    f"(mapping from {self.origins.get(id_or_path, 'unknown source')})"
                )
            return str(folder)
        local = Path(id_or_path).expanduser()
        if local.is_dir():
            return str(local.resolve())
        if id_or_path.endswith(".safetensors"):
            raise NotZImageCheckpointError(
                f"{id_or_path}: single-file checkpoints are not supported; give a diffusers "
                "folder (transformer/, vae/, text_encoder/, tokenizer/) or map the id to one"
            )
        if not _HUB_ID.match(id_or_path):
            raise ModelNotFoundError(
                f"model folder {id_or_path} does not exist (and it is not a hub id); "
                f"map it with --model-map ID=PATH"
            )
        return id_or_path

    def resolve_hub_file(self, hub_path: str) -> Path | None:
        """A hub file path ``org/repo/file`` mapped to a local file, or None.

        Either the whole path is mapped (to the file itself, or to a folder holding the
        file) or ``org/repo`` is mapped to a folder holding ``file``.
        """
        repo, _, filename = hub_path.rpartition("/")
        for key, name in ((hub_path, Path(filename).name), (repo, filename)):
            if key and key in self.entries:
                target = self.entries[key]
                path = target / name if target.is_dir() else target
                if path.is_file():
                    return path.resolve()
        return None


def _parse_pair(text: str, origin: str) -> tuple[str, Path]:
    key, sep, path = text.partition("=")
    key, path = key.strip(), path.strip()
    if not sep or not key or not path:
        raise ModelMapError(f"{origin}: malformed entry {text!r}, expected ID=PATH")
    return key, Path(path).expanduser().absolute()


def _read_pyproject(path: Path) -> list[tuple[str, Path]]:
    origin = f"{path} [tool.parity.models]"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelMapError(f"{path}: cannot read model map: {exc}") from exc
    table = data.get("tool", {}).get("parity", {}).get("models", {})
    if not isinstance(table, dict):
        raise ModelMapError(f"{origin}: expected a table of ID = PATH strings")
    items = []
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip() or not key.strip():
            raise ModelMapError(f"{origin}: malformed entry {key!r} = {value!r}, expected a path")
        folder = Path(value).expanduser()
        if not folder.is_absolute():
            folder = path.parent.absolute() / folder
        items.append((key.strip(), folder))
    return items
