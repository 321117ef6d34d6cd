"""Model map precedence, ai-toolkit's split-checkpoint rules and pipeline loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import render_pipeline

from parity.model_map import ModelMap
from parity.render.models import (
    ModelMapError,
    ModelNotFoundError,
    ModelSource,
    NotZImageCheckpointError,
    checkpoint_scheduler,
    load_pipeline,
    resolve_job_model,
    resolve_reference_model,
    validate_checkpoint,
)
from parity.zimage.checkpoints import ZIMAGE_DETURBO_HUB_ID, ZIMAGE_HUB_ID, ZIMAGE_TURBO_HUB_ID
from parity.zimage.family import ZIMAGE

TINY = Path(__file__).resolve().parent.parent / "fixtures" / "aitk_real" / "tiny_zimage"


def _load(cli=(), env=None, pyproject=None, base_model=None) -> ModelMap:
    return ModelMap.load(cli, env=env, pyproject=pyproject, base_model=base_model)


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("toml", "env", "cli", "base"):
        out[name] = tmp_path / name
        out[name].mkdir()
    return out


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny checkpoint split in two: transformer (+ scheduler) and the rest."""
    root = tmp_path_factory.mktemp("split")
    transformer, components = root / "transformer_only", root / "components"
    for part in ("transformer", "scheduler"):
        shutil.copytree(TINY / part, transformer / part)
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(TINY / part, components / part)
    shutil.copy(TINY / "model_index.json", components / "model_index.json")
    return transformer, components


def _write_pyproject(path: Path, table: str) -> Path:
    path.write_text(f'[project]\nname = "x"\n\n[tool.parity.models]\n{table}\n', encoding="utf-8")
    return path


# --- ModelMap -------------------------------------------------------------------------


def test_precedence_base_model_over_cli_over_env_over_pyproject(tmp_path, folders):
    pyproject = _write_pyproject(
        tmp_path / "pyproject.toml",
        '"A" = "toml"\n"B" = "toml"\n"C" = "toml"\n"D" = "toml"',
    )
    env = f"B={folders['env']},C={folders['env']},D={folders['env']}"
    cli = [f"C={folders['cli']}", f"D={folders['cli']}"]
    mm = _load(cli, env=env, pyproject=pyproject, base_model=("D", str(folders["base"])))
    assert mm.resolve("A") == str(folders["toml"])
    assert mm.resolve("B") == str(folders["env"])
    assert mm.resolve("C") == str(folders["cli"])
    assert mm.resolve("D") == str(folders["base"])
    assert mm.origins["C"] == "--model-map flag"
    assert "PARITY_MODEL_MAP" in mm.origins["B"]


def test_later_cli_flag_wins(folders):
    mm = _load([f"X={folders['env']}", f"X={folders['cli']}"])
    assert mm.resolve("X") == str(folders["cli"])


def test_env_is_read_at_call_time(monkeypatch, folders):
    monkeypatch.setenv("PARITY_MODEL_MAP", f"E={folders['env']}")
    mm = ModelMap.load(pyproject=None)
    assert mm.resolve("E") == str(folders["env"])


def test_pyproject_relative_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "models" / "z").mkdir(parents=True)
    pyproject = _write_pyproject(project / "pyproject.toml", f'"{ZIMAGE_HUB_ID}" = "models/z"')
    monkeypatch.chdir(tmp_path)  # not the pyproject's folder
    mm = _load(pyproject=pyproject)
    assert Path(mm.resolve(ZIMAGE_HUB_ID)) == (project / "models" / "z").absolute()


def test_default_pyproject_is_the_working_directory_one(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    _write_pyproject(tmp_path / "pyproject.toml", '"Org/M" = "m"')
    monkeypatch.chdir(tmp_path)
    mm = ModelMap.load(env=None)
    assert mm.resolve("Org/M") == str(tmp_path / "m")


@pytest.mark.parametrize(
    ("kwargs", "source"),
    [
        ({"cli": ["no-equals-sign"]}, "--model-map"),
        ({"cli": ["=folder"]}, "--model-map"),
        ({"env": "A=/x,B="}, "PARITY_MODEL_MAP"),
        ({"base_model": ("", "/x")}, "--base-model"),
    ],
)
def test_malformed_entries_name_their_source(kwargs, source):
    with pytest.raises(ModelMapError, match=source):
        _load(**kwargs)


def test_malformed_pyproject_entries(tmp_path):
    bad_value = _write_pyproject(tmp_path / "a.toml", '"A" = 3')
    with pytest.raises(ModelMapError, match="a.toml"):
        _load(pyproject=bad_value)
    bad_toml = tmp_path / "b.toml"
    bad_toml.write_text("[tool.parity.models\n", encoding="utf-8")
    with pytest.raises(ModelMapError, match="b.toml"):
        _load(pyproject=bad_toml)


def test_missing_mapped_folder_names_id_folder_and_source(tmp_path):
    missing = tmp_path / "nowhere"
    mm = _load([f"{ZIMAGE_HUB_ID}={missing}"])
    with pytest.raises(ModelNotFoundError) as info:
        mm.resolve(ZIMAGE_HUB_ID)
    message = str(info.value)
    assert ZIMAGE_HUB_ID in message and str(missing) in message and "--model-map" in message


def test_resolve_local_folder_hub_id_and_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    mm = _load()
    assert mm.resolve("local") == str(tmp_path / "local")
    assert mm.resolve(ZIMAGE_TURBO_HUB_ID) == ZIMAGE_TURBO_HUB_ID
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        mm.resolve(str(tmp_path / "gone" / "model"))
    with pytest.raises(NotZImageCheckpointError, match="single-file"):
        mm.resolve("z_image_turbo_bf16.safetensors")


# --- job and reference resolution -----------------------------------------------------


def test_job_full_checkpoint_through_map():
    mm = _load(base_model=(ZIMAGE_HUB_ID, str(TINY)))
    source = resolve_job_model(ZIMAGE_HUB_ID, None, mm)
    assert source.transformer == source.components == source.scheduler == str(TINY)
    assert not source.is_split
    assert source.label == ZIMAGE_HUB_ID
    assert checkpoint_scheduler(source).shift == 6.0


def test_job_split_checkpoint_with_extras(split_dirs):
    transformer, components = split_dirs
    mm = _load([f"{ZIMAGE_TURBO_HUB_ID}={components}"])
    source = resolve_job_model(str(transformer), ZIMAGE_TURBO_HUB_ID, mm)
    assert source.transformer == str(transformer)
    assert source.components == str(components)
    assert source.scheduler == str(transformer)  # the transformer folder has scheduler/
    assert source.is_split
    validate_checkpoint(source)


def test_job_split_scheduler_falls_back_to_components(split_dirs, tmp_path):
    transformer, components = split_dirs
    bare = tmp_path / "bare"
    shutil.copytree(transformer / "transformer", bare / "transformer")
    full_components = tmp_path / "components"
    shutil.copytree(components, full_components)
    shutil.copytree(TINY / "scheduler", full_components / "scheduler")
    source = resolve_job_model(str(bare), str(full_components), _load())
    assert source.scheduler == str(full_components)
    assert checkpoint_scheduler(source).shift == 6.0


def test_job_folder_with_text_encoder_ignores_extras(split_dirs):
    _, components = split_dirs
    source = resolve_job_model(str(TINY), str(components), _load())
    assert source.transformer == source.components == str(TINY)


def test_job_transformer_only_without_extras_is_an_error(split_dirs):
    transformer, _ = split_dirs
    with pytest.raises(ModelNotFoundError, match="extras_name_or_path") as info:
        resolve_job_model(str(transformer), None, _load())
    assert str(transformer) in str(info.value)


def test_job_hub_ids_pass_through():
    source = resolve_job_model(ZIMAGE_DETURBO_HUB_ID, ZIMAGE_TURBO_HUB_ID, _load())
    assert (source.transformer, source.components) == (ZIMAGE_DETURBO_HUB_ID, ZIMAGE_TURBO_HUB_ID)
    validate_checkpoint(source)  # hub ids are not checked


def test_reference_deturbo_is_split_through_the_map(split_dirs):
    transformer, components = split_dirs
    mm = _load([f"{ZIMAGE_DETURBO_HUB_ID}={transformer}", f"{ZIMAGE_TURBO_HUB_ID}={components}"])
    source = resolve_reference_model("zimage_deturbo", mm)
    assert source.transformer == str(transformer)
    assert source.components == str(components)
    assert source.label == "zimage_deturbo"
    turbo = resolve_reference_model("zimage_turbo", mm)
    assert turbo.transformer == turbo.components == str(components)


def test_reference_models_unmapped_and_known_shifts():
    mm = _load()
    turbo = resolve_reference_model("zimage_turbo", mm)
    assert turbo.transformer == turbo.components == ZIMAGE_TURBO_HUB_ID
    assert checkpoint_scheduler(turbo).shift == 3.0
    assert checkpoint_scheduler(resolve_reference_model("zimage", mm)).shift == 6.0
    deturbo = resolve_reference_model("zimage_deturbo", mm)
    assert (deturbo.transformer, deturbo.components) == (ZIMAGE_DETURBO_HUB_ID, ZIMAGE_TURBO_HUB_ID)
    with pytest.raises(ModelNotFoundError, match="zimage_turbo.*flux"):
        resolve_reference_model("sdxl", mm)


# --- validation -----------------------------------------------------------------------


def test_validate_checkpoint_errors(tmp_path):
    validate_checkpoint(ModelSource(str(TINY), str(TINY), str(TINY), "tiny"))

    broken = tmp_path / "broken"
    shutil.copytree(TINY, broken)
    source = ModelSource(str(broken), str(broken), str(broken), "broken")

    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelNotFoundError, match="tokenizer") as info:
        validate_checkpoint(source)
    assert str(broken) in str(info.value)

    (broken / "vae" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="vae/config.json"):
        validate_checkpoint(source)

    config_path = broken / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "FluxTransformer2DModel"
    config_path.write_text(json.dumps(config))
    with pytest.raises(NotZImageCheckpointError, match="a FLUX.1 checkpoint.*Z-Image job"):
        validate_checkpoint(source, ZIMAGE)

    config_path.unlink()
    with pytest.raises(ModelNotFoundError, match="transformer/config.json"):
        validate_checkpoint(source)


# --- loading --------------------------------------------------------------------------


def _render(pipe, seed: int = 5) -> np.ndarray:
    return render_pipeline(pipe, prompt="a small red house", seed=seed)


def test_split_pipeline_renders_like_the_full_checkpoint(split_dirs):
    transformer, components = split_dirs
    full = load_pipeline(
        ModelSource(str(TINY), str(TINY), str(TINY), "tiny"), dtype="float32", device="cpu"
    )
    split_source = resolve_job_model(str(transformer), str(components), _load())
    split = load_pipeline(split_source, dtype="float32", device="cpu")
    assert type(split.text_encoder) is type(full.text_encoder)
    assert split.scheduler.config.shift == full.scheduler.config.shift == 6.0
    reference = _render(full)
    assert reference.shape == (64, 64, 3) and reference.std() > 1.0
    np.testing.assert_array_equal(_render(split), reference)
    assert not np.array_equal(_render(full, seed=6), reference)  # the seed matters


def test_pipeline_without_scheduler_gets_default(split_dirs, tmp_path):
    _, components = split_dirs
    bare = tmp_path / "bare"
    shutil.copytree(TINY / "transformer", bare / "transformer")
    source = resolve_job_model(str(bare), str(components), _load())
    assert source.scheduler is None
    assert checkpoint_scheduler(source) is None
    pipe = load_pipeline(source, dtype="float32")
    assert pipe.scheduler.config.shift == 3.0
    assert not pipe.scheduler.config.use_dynamic_shifting
