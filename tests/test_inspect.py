"""Tests of ``parity inspect`` and of the reference side it reports (parity.zimage.server).

Expected values are derived by hand from the upstream rules, cited in comments:

ai-toolkit (preview side): see tests/test_job.py; in short, items fall back to the
sample-level values, prompt flags override them, sizes are floored to 8 (min 64) and then
to 16 by Z-Image (32 before 0.9.15), the pipeline gets ``max(0, g - 1)`` from 0.10.21
(``g`` before), scheduler shift 3.0 always, and the LoRA is merged only when every item
shares one multiplier.

Reference server (runcomfy ai-toolkit-inference):
- ``src/schemas/request.py``: ``loras[].network_multiplier`` in [-2, 2]; per prompt
  ``width``/``height`` in [64, 4096], ``guidance_scale`` in [0, 20], ``sample_steps`` in
  [1, 150], ``seed`` >= -1; at least one prompt.
- ``src/tasks/executor.py``: ``[trigger]`` replaced by the prompt's ``trigger_word`` or
  the request's, left alone when neither is given; width/height default 1024 and are
  floored to the pipeline's ``resolution_divisor``; steps and guidance default to the
  pipeline's; seed of prompt i without one is ``42 + i``.
- ``src/api/v1/inference.py``: one LoRA scale per request, the first
  ``network_multiplier`` given (1.0 when none).
- ``src/pipelines/zimage*.py``: divisor 32; zimage 30 steps / cfg 4.0, scheduler replaced
  by FlowMatch shift 3.0; zimage_turbo 8 / 1.0, keeps the checkpoint's scheduler;
  zimage_deturbo 25 / 3.0, shift 3.0. ``base.py`` passes guidance to diffusers unchanged.

The as-configured request (parity's model of a user copying the sample config) copies only
what the config writes: flags resolved into fields, ``[trigger]`` left for the server,
one LoRA at the sample-level multiplier, and the item's seed, else the sample-level seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from parity.cli import main
from parity.errors import RequestError
from parity.job import read_job
from parity.plan.sides import as_configured_request
from parity.server import (
    InferenceRequest,
    server_lora_scale,
    server_prompts,
    validate_request,
)
from parity.settings import CAUSES
from parity.testing.jobs import AITK_REAL_JOB, TINY_BASE, job_config
from parity.testing.lora import write_aitk_lora

REPO = Path(__file__).resolve().parent.parent

ROW_KEYS = {
    "step",
    "index",
    "preview",
    "prompt",
    "negative_prompt",
    "aitk",
    "reference",
    "differences",
    "aitk_version",
    "error",
}
AITK_KEYS = {
    "width",
    "height",
    "guidance_scale",
    "pipeline_guidance",
    "steps",
    "seed",
    "network_multiplier",
    "scheduler_shift",
}
REFERENCE_KEYS = AITK_KEYS | {"model"}


def make_job(
    root: Path,
    sample: dict,
    *,
    name: str = "job",
    checkpoints: dict[int, str] | None = None,
    previews: dict[int, int] | None = None,
    **config_kwargs,
) -> Path:
    """A job folder as ai-toolkit lays it out: config.yaml (yaml.dump), LoRA checkpoints
    with ai-toolkit metadata, ``samples/<ms>__<9-digit step>_<i>.jpg`` plus ``.thumbs/`` and
    ``.tmp/`` leftovers. ``previews`` defaults to one preview per sample item at step 0
    and at every checkpoint step."""
    folder = root / name
    (folder / "samples" / ".thumbs").mkdir(parents=True)
    (folder / "samples" / ".tmp").mkdir()
    config = job_config(name=name, sample=sample, **config_kwargs)
    (folder / "config.yaml").write_text(yaml.dump(config), encoding="utf-8")
    checkpoints = {10: "0.12.26"} if checkpoints is None else checkpoints
    for step, version in checkpoints.items():
        write_aitk_lora(
            folder / f"{name}_{step:09d}.safetensors",
            TINY_BASE,
            step=step,
            name=name,
            aitk_version=version,
        )
    if previews is None:
        n = len(sample.get("samples", sample.get("prompts", [])))
        previews = {step: n for step in (0, *checkpoints)}
    ms = 1_795_416_356_582
    for step, count in previews.items():
        for i in range(count):
            ms += 389
            filename = f"{ms}__{step:09d}_{i}.jpg"
            Image.new("RGB", (64, 64), (10 * i, 100, 50)).save(folder / "samples" / filename)
            Image.new("RGB", (30, 30)).save(folder / "samples" / ".thumbs" / f"{filename}.jpg")
            Image.new("RGB", (64, 64)).save(folder / "samples" / ".tmp" / filename, "JPEG")
    return folder


def inspect_json(capsys, path: Path, *extra: str) -> list[dict]:
    code = main(["inspect", str(path), "--format", "json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def by_key(rows: list[dict]) -> dict[tuple[int, int], dict]:
    return {(r["step"], r["index"]): r for r in rows}


# ---------------------------------------------------------------- the real job


def test_real_job_inspected_as_upstream_would(capsys):
    """fixtures/aitk_real/output/aitk_zimage, every value derived by hand.

    Config: 64x64, seed 42, walk_seed, cfg 4, 6 steps, neg '', multiplier 1.0, trigger
    sks, arch zimage (Tongyi-MAI/Z-Image), train dtype fp32; LoRAs at step 10 and the
    final one at step 20, both stamped ai-toolkit 0.12.26 (cfg g-1, floor 16, N updates).
    """
    rows = inspect_json(capsys, AITK_REAL_JOB)
    assert len(rows) == 15
    assert sorted((r["step"], r["index"]) for r in rows) == [
        (s, i) for s in (0, 10, 20) for i in range(5)
    ]
    # Per item: (prompt, neg, aitk (w, h, cfg, pipeline cfg, steps, seed, multiplier),
    #            reference (w, h, cfg = pipeline cfg, steps, seed), differences at steps 10/20)
    expected = {
        # item 0: sample-level values; preview cfg 4 -> max(0, 4-1) = 3, server passes 4;
        # seed 42 + 0 by walk_seed; the as-configured request writes ai-toolkit's seeds.
        0: (
            "sks a red cube on a table",
            "",
            (64, 64, 4, 3, 6, 42, 1.0),
            (64, 64, 4, 6, 42),
            ["cfg"],
        ),
        # item 1: 80x112 (multiples of 16) vs server floor 32 -> 64x96; cfg 0 -> 0 both;
        # walk_seed 42 + 1 on both sides.
        1: (
            "sks a blue sphere",
            "",
            (80, 112, 0, 0, 6, 43, 1.0),
            (64, 96, 0, 6, 43),
            ["snapping"],
        ),
        # item 2: multiplier 0.5 vs the request's one LoRA scale 1.0; seed 44 both.
        2: (
            "sks a green cone in a field",
            "",
            (64, 64, 0, 0, 6, 44, 0.5),
            (64, 64, 0, 6, 44),
            ["lora_scale"],
        ),
        # item 3: --seed 7 --steps 4 on both sides; nothing differs.
        3: ("sks a wooden house", "", (64, 64, 0, 0, 4, 7, 1.0), (64, 64, 0, 4, 7), []),
        # item 4: 100x90 -> floor8 96x88 -> floor16 96x80; server 96x64 (floor 32);
        # --n blurry --cfg 2.5 -> pipeline 1.5 vs 2.5; seed 42 + 4 = 46 both.
        4: (
            "sks a cat at night",
            "blurry",
            (96, 80, 2.5, 1.5, 6, 46, 1.0),
            (96, 64, 2.5, 6, 46),
            ["snapping", "cfg"],
        ),
    }
    for (step, index), row in by_key(rows).items():
        prompt, neg, a, r, diffs = expected[index]
        assert row["error"] is None
        assert row["aitk_version"] == "0.12.26"
        assert row["prompt"] == prompt and row["negative_prompt"] == neg
        aitk, ref = row["aitk"], row["reference"]
        got_a = (
            aitk["width"],
            aitk["height"],
            aitk["guidance_scale"],
            aitk["pipeline_guidance"],
            aitk["steps"],
            aitk["seed"],
        )
        assert got_a == a[:6], (step, index)
        got_r = (ref["width"], ref["height"], ref["guidance_scale"], ref["steps"], ref["seed"])
        assert got_r == r, (step, index)
        assert ref["pipeline_guidance"] == ref["guidance_scale"]  # base.py: unchanged
        assert ref["model"] == "zimage"
        assert aitk["scheduler_shift"] == 3.0 and ref["scheduler_shift"] == 3.0
        if step == 0:
            # before training (LoRA B = 0): no LoRA file on either side
            assert aitk["network_multiplier"] is None and ref["network_multiplier"] is None
            assert row["differences"] == [d for d in diffs if d != "lora_scale"]
        else:
            assert aitk["network_multiplier"] == a[6]
            assert aitk["lora_merged"] is False  # item 2's 0.5 keeps the LoRA unmerged
            assert ref["network_multiplier"] == 1.0  # sample-level network_multiplier
            assert row["differences"] == diffs
        assert row["preview"].startswith("samples/") and row["preview"].endswith(
            f"__{step:09d}_{index}.jpg"
        )


def test_json_rows_carry_the_contract_keys(capsys):
    rows = inspect_json(capsys, AITK_REAL_JOB)
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert AITK_KEYS <= set(row["aitk"])
        assert REFERENCE_KEYS <= set(row["reference"])
        # preview is relative to the job folder and names an existing file
        assert not os.path.isabs(row["preview"])
        assert (AITK_REAL_JOB / row["preview"]).is_file()
        assert row["differences"] == sorted(row["differences"], key=CAUSES.index)
        assert set(row["differences"]) <= set(CAUSES)


def test_table_format_lists_every_preview(capsys):
    assert main(["inspect", str(AITK_REAL_JOB)]) == 0
    out = capsys.readouterr().out
    assert "0.12.26" in out and "aitk_zimage" in out
    assert "96x80|96x64" in out  # item 4, preview | server


# ----------------------------------------------------------- as configured


def test_nothing_written_means_server_defaults(tmp_path, capsys):
    # Only prompts written: ai-toolkit uses its SampleConfig defaults (512x512, cfg 7 ->
    # pipeline 6, 20 steps, seed 0 for every item without walk_seed); the request copies
    # nothing, so the server uses zimage's (1024x1024, 30 steps, cfg 4, seed 42 + i).
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]})
    rows = by_key(inspect_json(capsys, folder))
    for i in range(3):
        row = rows[(10, i)]
        a, r = row["aitk"], row["reference"]
        assert (a["width"], a["height"], a["pipeline_guidance"], a["steps"], a["seed"]) == (
            512,
            512,
            6,
            20,
            0,
        )
        assert (r["width"], r["height"], r["pipeline_guidance"], r["steps"], r["seed"]) == (
            1024,
            1024,
            4,
            30,
            42 + i,
        )
        assert row["differences"] == ["snapping", "cfg", "steps", "seed"]
    request = as_configured_request(read_job(folder), read_job(folder).checkpoint_for_step(10))
    for item in request.prompts:
        assert (item.width, item.height, item.seed, item.sample_steps, item.guidance_scale) == (
            None,
            None,
            None,
            None,
            None,
        )


def test_request_copies_what_is_written_and_leaves_trigger_for_the_server(tmp_path):
    sample = {
        "width": 96,
        "guidance_scale": 3,
        "network_multiplier": 0.8,
        "samples": [
            {"prompt": "[trigger] on a beach --h 128 --seed 5 --s 7 --n dark"},
            {"prompt": "[trigger] in snow", "sample_steps": 9},
        ],
    }
    job = read_job(make_job(tmp_path, sample))
    request = as_configured_request(job, job.checkpoint_for_step(10))
    assert request.model == "zimage" and request.trigger_word == "sks"
    (lora,) = request.loras
    assert (lora.path, lora.network_multiplier) == ("job_000000010.safetensors", 0.8)
    a, b = request.prompts
    assert a.prompt == "[trigger] on a beach"  # flags resolved, tag left for the server
    assert (a.width, a.height, a.seed, a.sample_steps, a.guidance_scale, a.neg) == (
        96,
        128,
        5,
        7,
        3,
        "dark",
    )
    assert (b.prompt, b.width, b.height, b.seed, b.sample_steps) == (
        "[trigger] in snow",
        96,
        None,
        None,
        9,
    )
    # and the server, substituting the trigger, sees the text the preview encoded
    served = server_prompts(request)
    assert [p.prompt for p in served] == [s.prompt for s in job.samples]
    assert [p.seed for p in served] == [5, 43]  # explicit, else 42 + i
    assert [p.height for p in served] == [128, 1024]


# --------------------------------------------------------------- model kinds


def test_turbo_cfg_one_runs_no_cfg_in_previews_but_does_on_the_server(tmp_path, capsys):
    folder = make_job(
        tmp_path,
        {"guidance_scale": 1, "samples": [{"prompt": "a"}]},
        arch="zimage:turbo",
        name_or_path="Tongyi-MAI/Z-Image-Turbo",
    )
    row = by_key(inspect_json(capsys, folder))[(10, 0)]
    # z_image.py: max(0, 1 - 1) = 0; the server passes 1 unchanged.
    assert (row["aitk"]["guidance_scale"], row["aitk"]["pipeline_guidance"]) == (1, 0)
    assert row["reference"]["model"] == "zimage_turbo"
    assert (row["reference"]["guidance_scale"], row["reference"]["pipeline_guidance"]) == (1, 1)
    # steps not written: 20 (SampleConfig) vs 8 (zimage_turbo default)
    assert (row["aitk"]["steps"], row["reference"]["steps"]) == (20, 8)
    assert "cfg" in row["differences"] and "steps" in row["differences"]


def test_base_cfg_four(tmp_path, capsys):
    folder = make_job(
        tmp_path, {"guidance_scale": 4, "sample_steps": 30, "samples": [{"prompt": "a"}]}
    )
    row = by_key(inspect_json(capsys, folder))[(10, 0)]
    assert (row["aitk"]["pipeline_guidance"], row["reference"]["pipeline_guidance"]) == (3, 4)
    assert row["reference"]["scheduler_shift"] == 3.0  # zimage replaces the scheduler


def test_deturbo_defaults(tmp_path, capsys):
    folder = make_job(
        tmp_path,
        {"samples": [{"prompt": "a"}]},
        arch="zimage:deturbo",
        name_or_path="ostris/Z-Image-De-Turbo",
    )
    ref = by_key(inspect_json(capsys, folder))[(10, 0)]["reference"]
    assert (ref["model"], ref["steps"], ref["guidance_scale"], ref["scheduler_shift"]) == (
        "zimage_deturbo",
        25,
        3.0,
        3.0,
    )


def test_model_override_option(tmp_path, capsys):
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}]}, name_or_path="/local/zimg")
    ref = by_key(inspect_json(capsys, folder, "--model", "zimage_turbo"))[(10, 0)]["reference"]
    assert (ref["model"], ref["steps"]) == ("zimage_turbo", 8)


# ---------------------------------------------------------------------- eras


@pytest.mark.parametrize(
    ("version", "aitk_size", "pipeline", "legacy", "diffs"),
    [
        # 0.9.10: guidance g, floor 32 (80x112 -> 64x96), N-1 updates (old diffusers pin)
        ("0.9.10", (64, 96), 4, True, ["library"]),
        # 0.10.22: g - 1, floor 16, still N-1 updates
        ("0.10.22", (80, 112), 3, True, ["snapping", "cfg", "library"]),
        # 0.12.26: g - 1, floor 16, N updates
        ("0.12.26", (80, 112), 3, False, ["snapping", "cfg"]),
    ],
)
def test_eras(tmp_path, capsys, version, aitk_size, pipeline, legacy, diffs):
    sample = {
        "width": 80,
        "height": 112,
        "guidance_scale": 4,
        "sample_steps": 6,
        "seed": 1,
        "samples": [{"prompt": "a", "seed": 42}],
    }
    folder = make_job(tmp_path, sample, checkpoints={10: version})
    row = by_key(inspect_json(capsys, folder))[(10, 0)]
    assert row["aitk_version"] == version
    assert (row["aitk"]["width"], row["aitk"]["height"]) == aitk_size
    assert row["aitk"]["pipeline_guidance"] == pipeline
    assert row["aitk"]["legacy_sigmas"] is legacy
    assert (row["reference"]["width"], row["reference"]["height"]) == (64, 96)
    assert row["differences"] == diffs


def test_each_step_uses_the_version_of_its_own_checkpoint(tmp_path, capsys):
    # a job resumed after an upgrade: step 10 written by 0.9.10, step 20 by 0.12.26
    folder = make_job(
        tmp_path,
        {"guidance_scale": 4, "samples": [{"prompt": "a"}]},
        checkpoints={10: "0.9.10", 20: "0.12.26"},
    )
    rows = by_key(inspect_json(capsys, folder))
    assert (rows[(10, 0)]["aitk_version"], rows[(10, 0)]["aitk"]["pipeline_guidance"]) == (
        "0.9.10",
        4,
    )
    assert (rows[(20, 0)]["aitk_version"], rows[(20, 0)]["aitk"]["pipeline_guidance"]) == (
        "0.12.26",
        3,
    )


def test_merged_when_all_multipliers_equal(tmp_path, capsys):
    folder = make_job(
        tmp_path, {"network_multiplier": 0.7, "samples": [{"prompt": "a"}, {"prompt": "b"}]}
    )
    rows = by_key(inspect_json(capsys, folder))
    assert rows[(10, 0)]["aitk"]["lora_merged"] is True
    assert rows[(10, 1)]["aitk"]["network_multiplier"] == 0.7
    assert rows[(10, 1)]["reference"]["network_multiplier"] == 0.7


# ----------------------------------------------------------- server semantics


def _request(**overrides):
    body = {
        "model": "zimage",
        "loras": [{"path": "x.safetensors"}],
        "prompts": [{"prompt": "a"}],
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("model", "steps", "cfg"),
    [("zimage", 30, 4.0), ("zimage_turbo", 8, 1.0), ("zimage_deturbo", 25, 3.0)],
)
def test_server_defaults_per_model(model, steps, cfg):
    request = validate_request(_request(model=model, prompts=[{"prompt": "a"}, {"prompt": "b"}]))
    for i, p in enumerate(server_prompts(request)):
        assert (p.width, p.height, p.steps, p.guidance_scale, p.seed, p.negative_prompt) == (
            1024,
            1024,
            steps,
            cfg,
            42 + i,
            "",
        )


def test_server_floors_to_32_and_keeps_explicit_values():
    request = validate_request(
        _request(
            prompts=[
                {"prompt": "a", "width": 100, "height": 90, "seed": 7, "guidance_scale": 0},
                {"prompt": "b", "width": 1040, "height": 720, "seed": -1, "sample_steps": 3},
                {"prompt": "c", "width": 1000, "height": 64},
            ]
        )
    )
    a, b, c = server_prompts(request)
    assert (a.width, a.height, a.seed, a.guidance_scale) == (96, 64, 7, 0)
    assert (b.width, b.height, b.steps, b.random_seed) == (1024, 704, 3, True)
    assert (c.width, c.height, c.seed) == (992, 64, 44)


def test_server_trigger_replacement():
    request = validate_request(
        _request(
            trigger_word="sks",
            prompts=[
                {"prompt": "[trigger] x"},
                {"prompt": "[trigger] y", "trigger_word": "ohwx"},
            ],
        )
    )
    assert [p.prompt for p in server_prompts(request)] == ["sks x", "ohwx y"]
    no_trigger = validate_request(_request(prompts=[{"prompt": "[trigger] x"}]))
    assert server_prompts(no_trigger)[0].prompt == "[trigger] x"


@pytest.mark.parametrize(
    ("loras", "scale"),
    [
        ([{"path": "a"}], 1.0),
        ([{"path": "a", "network_multiplier": 0.5}], 0.5),
        # inference.py _get_lora_scale: the first non-None multiplier
        ([{"path": "a"}, {"path": "b", "network_multiplier": -0.5}], -0.5),
        ([{"path": "a", "network_multiplier": 0.3}, {"path": "b", "network_multiplier": 2}], 0.3),
    ],
)
def test_one_lora_scale_per_request(loras, scale):
    # Schema only: the API refuses two LoRAs for zimage (SINGLE_LORA_ONLY, tested
    # separately), but the scale rule itself takes the first multiplier given.
    request = InferenceRequest.model_validate(_request(loras=loras))
    assert server_lora_scale(request) == scale
    assert all(p.lora_scale == scale for p in server_prompts(request))


@pytest.mark.parametrize(
    "body",
    [
        _request(prompts=[{"prompt": "a", "width": 50}]),
        _request(prompts=[{"prompt": "a", "height": 4097}]),
        _request(prompts=[{"prompt": "a", "sample_steps": 0}]),
        _request(prompts=[{"prompt": "a", "sample_steps": 151}]),
        _request(prompts=[{"prompt": "a", "guidance_scale": 25}]),
        _request(prompts=[{"prompt": "a", "guidance_scale": -0.1}]),
        _request(prompts=[{"prompt": "a", "seed": -2}]),
        _request(loras=[{"path": "a", "network_multiplier": 3}]),
        _request(prompts=[]),
        {"model": "zimage", "loras": []},
    ],
    ids=[
        "width50",
        "height4097",
        "steps0",
        "steps151",
        "guidance25",
        "guidance-neg",
        "seed-2",
        "multiplier3",
        "empty-prompts",
        "no-prompts",
    ],
)
def test_request_schema_rejects(body):
    with pytest.raises(RequestError, match="schema"):
        validate_request(body, source="req.json")


def test_request_schema_accepts_the_bounds():
    validate_request(
        _request(
            loras=[{"path": "a", "network_multiplier": -2}],
            prompts=[
                {
                    "prompt": "a",
                    "width": 64,
                    "height": 4096,
                    "sample_steps": 150,
                    "guidance_scale": 20,
                    "seed": -1,
                }
            ],
        )
    )


def test_request_without_loras_key_is_refused():
    with pytest.raises(RequestError):
        validate_request({"model": "zimage", "prompts": [{"prompt": "a"}]})


def test_two_loras_on_zimage_are_refused():
    with pytest.raises(RequestError):
        validate_request(_request(loras=[{"path": "a"}, {"path": "b"}]))


def test_unknown_lora_keys_are_ignored():
    validate_request(_request(loras=[{"path": "a", "name": "my lora"}]))


# ---------------------------------------------------------------- bad input


def _fail(capsys, path) -> str:
    code = main(["inspect", str(path), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    return captured.err


def test_missing_config_exits_2_naming_the_folder(tmp_path, capsys):
    (tmp_path / "job").mkdir()
    err = _fail(capsys, tmp_path / "job")
    assert str(tmp_path / "job") in err and "config" in err


def test_unparsable_config_exits_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "config.yaml").write_text("config: {name: [\n", encoding="utf-8")
    err = _fail(capsys, tmp_path / "job")
    assert "config.yaml" in err and "YAML" in err


def test_unknown_arch_exits_2(tmp_path, capsys):
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}]}, arch="hidream", checkpoints={})
    err = _fail(capsys, folder)
    assert "config.yaml" in err and "'hidream'" in err and "flux" in err


def test_no_sample_section_exits_2(tmp_path, capsys):
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}]}, checkpoints={})
    config = yaml.safe_load((folder / "config.yaml").read_text())
    del config["config"]["process"][0]["sample"]
    (folder / "config.yaml").write_text(yaml.dump(config))
    err = _fail(capsys, folder)
    assert "config.yaml" in err and "sample" in err


def test_python_tag_is_refused_safely(tmp_path, capsys):
    marker = tmp_path / "ran"
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "config.yaml").write_text(
        f"job: extension\nconfig: !!python/object/apply:os.system ['touch {marker}']\n",
        encoding="utf-8",
    )
    err = _fail(capsys, tmp_path / "job")
    assert "config.yaml" in err
    assert not marker.exists()


def test_preview_beyond_the_sample_list_is_reported_and_the_rest_inspected(tmp_path, capsys):
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}, {"prompt": "b"}]})
    stray = folder / "samples" / "1795416399999__000000010_5.jpg"
    Image.new("RGB", (64, 64)).save(stray)
    rows = by_key(inspect_json(capsys, folder))
    assert rows[(10, 5)]["aitk"] is None
    assert "5" in rows[(10, 5)]["error"] and stray.name in rows[(10, 5)]["error"]
    assert all(rows[(s, i)]["error"] is None for s in (0, 10) for i in (0, 1))


def test_zero_byte_preview_is_reported_and_the_rest_inspected(tmp_path, capsys):
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}, {"prompt": "b"}]})
    (broken,) = (folder / "samples").glob("*__000000010_1.jpg")
    broken.write_bytes(b"")
    rows = by_key(inspect_json(capsys, folder))
    assert rows[(10, 0)]["error"] is None and rows[(10, 0)]["aitk"] is not None
    assert rows[(10, 1)]["error"] and broken.name in rows[(10, 1)]["error"]


def test_preview_of_a_step_without_checkpoint_is_reported(tmp_path, capsys):
    # ai-toolkit keeps only save.max_step_saves_to_keep checkpoints
    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}]}, previews={0: 1, 10: 1, 5: 1})
    rows = by_key(inspect_json(capsys, folder))
    assert rows[(5, 0)]["error"] and rows[(5, 0)]["aitk"] is None
    assert rows[(10, 0)]["error"] is None


def test_no_trigger_word_both_sides_keep_the_tag(tmp_path, capsys):
    folder = make_job(tmp_path, {"samples": [{"prompt": "[trigger] a"}]}, trigger_word=None)
    row = by_key(inspect_json(capsys, folder))[(10, 0)]
    assert row["prompt"] == "[trigger] a"
    assert "prompt" not in row["differences"]


# --------------------------------------------------------------------- speed


def _ten_sample_job(tmp_path: Path) -> Path:
    sample = {"seed": 3, "walk_seed": True, "samples": [{"prompt": f"p{i}"} for i in range(10)]}
    return make_job(tmp_path, sample)


def test_module_entry_point_runs_inspect(tmp_path):
    folder = _ten_sample_job(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "parity.cli", "inspect", str(folder), "--format", "json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 20  # 10 samples at steps 0 and 10
    assert [r["aitk"]["seed"] for r in rows if r["step"] == 10] == list(range(3, 13))


def test_inspect_loads_no_model(tmp_path):
    folder = _ten_sample_job(tmp_path)
    code = (
        "import sys, io, contextlib, parity.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = parity.cli.main(['inspect', {str(folder)!r}, '--format', 'json'])\n"
        "print(rc, 'torch' in sys.modules, 'diffusers' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.stdout.split() == ["0", "False", "False"], proc.stderr


def test_as_configured_request_writes_the_seeds_ai_toolkit_used():
    """walk_seed from 42 over five items, item 3 with its own --seed 7 flag."""
    from parity.job import read_job
    from parity.plan.sides import as_configured_request

    job = read_job(AITK_REAL_JOB)
    for step in (0, 10, 20):
        request = as_configured_request(job, job.checkpoint_for_step(step))
        assert [p.seed for p in request.prompts] == [42, 43, 44, 7, 46]
