"""Tests of the ai-toolkit job reader (parity.job), written from ai-toolkit's own rules.

Every expected value is derived by hand from the upstream semantics, cited in comments:

- ``SampleConfig`` / ``SampleItem`` (toolkit/config_modules.py): sample-level defaults
  (512x512, seed 0, walk_seed off, cfg 7, 20 steps, multiplier 1), per-item fallbacks, a
  string ``network_multiplier`` parsed as a float (1.0 when unparsable), legacy
  ``prompts:`` used only when ``samples:`` is absent.
- ``GenerateImageConfig`` (same file): ``_process_prompt_string`` strips the prompt, splits
  it on ``--``, the first piece is the text and each later piece starts with a flag name
  (``n w h d seed l cfg s steps m network_multiplier``, others ignored); flags override
  the item's values; then width/height are floored to a multiple of 8, minimum 64.
- ``BaseSDTrainProcess.sample()``: the running seed starts at ``sample.seed``; with
  ``walk_seed`` item i gets ``seed + i``; an item's own ``seed`` becomes the running seed
  (so, without ``walk_seed``, it carries over to later items); ``[trigger]``/``[name]``
  are replaced by the trigger word only when ``trigger_word`` is set
  (``inject_trigger_into_prompt`` is not called otherwise); a prompt-flag seed does not
  touch the running seed (it is applied inside ``GenerateImageConfig``).
- ``BaseModel.generate_images``: the LoRA is merged for sampling when all items share one
  multiplier (after flags) and the network can merge (not quantized, not layer-offloaded).
- ``z_image.py`` ``generate_single_image``: floor to the bucket divisibility (16; 32
  before 0.9.15), guidance ``max(0, g - 1)`` from 0.10.21 (``g`` before).
- ``toolkit/config.py``: YAML read with a SafeLoader whose float resolver accepts
  exponents without a dot (``1e-4``); ``[name]`` replaced by the job name at load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from parity.aitk import floor8
from parity.errors import JobError
from parity.job import (
    load_job_file,
    parse_prompt_flags,
    read_job,
    reference_model_for,
    resolve_samples,
)
from parity.plan.sides import preview_settings
from parity.testing.jobs import AITK_REAL_JOB, TINY_BASE, job_config
from parity.testing.lora import write_aitk_lora
from parity.zimage.aitk import era_for_version
from parity.zimage.family import ZIMAGE

MS0 = 1_795_416_356_582  # a plausible "ms since epoch" prefix


def make_job(
    root: Path,
    sample: dict,
    *,
    name: str = "job",
    checkpoints: dict[int, str] | None = None,
    final: tuple[int, str] | None = None,
    previews: dict[int, int] | None = None,
    **config_kwargs,
) -> Path:
    """Lay out a job folder the way ai-toolkit does (no rendering).

    ``checkpoints``: step -> ai-toolkit version of ``<name>_<9-digit step>.safetensors``.
    ``final``: (training step, version) of the final ``<name>.safetensors``.
    ``previews``: step -> number of previews ``samples/<ms>__<9-digit step>_<i>.jpg``;
    each also gets a ``.thumbs/<file>.jpg`` thumbnail and a stray ``.tmp/<file>`` copy, as
    ai-toolkit's atomic save leaves them.
    """
    folder = root / name
    (folder / "samples" / ".thumbs").mkdir(parents=True)
    (folder / "samples" / ".tmp").mkdir()
    config = job_config(name=name, sample=sample, **config_kwargs)
    (folder / "config.yaml").write_text(yaml.dump(config), encoding="utf-8")
    for step, version in (checkpoints or {}).items():
        write_aitk_lora(
            folder / f"{name}_{step:09d}.safetensors",
            TINY_BASE,
            step=step,
            name=name,
            aitk_version=version,
        )
    if final is not None:
        write_aitk_lora(
            folder / f"{name}.safetensors",
            TINY_BASE,
            step=final[0],
            name=name,
            aitk_version=final[1],
        )
    ms = MS0
    for step, count in (previews or {}).items():
        for i in range(count):
            ms += 401
            filename = f"{ms}__{step:09d}_{i}.jpg"
            Image.new("RGB", (64, 64), (i * 20, 90, 200)).save(folder / "samples" / filename)
            Image.new("RGB", (30, 30)).save(folder / "samples" / ".thumbs" / f"{filename}.jpg")
            Image.new("RGB", (64, 64)).save(folder / "samples" / ".tmp" / filename, "JPEG")
    return folder


def specs(sample: dict, trigger: str | None = "sks", name: str = "job"):
    return resolve_samples(sample, trigger_word=trigger, job_name=name)


# ------------------------------------------------------------------ prompt flags

BASE_SAMPLE = {
    "width": 512,
    "height": 512,
    "seed": 3,
    "guidance_scale": 4,
    "sample_steps": 20,
    "network_multiplier": 1.0,
    "neg": "",
}


@pytest.mark.parametrize(
    ("prompt", "field", "expected"),
    [
        ("a cat --n ugly, blurry", "negative_prompt", "ugly, blurry"),
        ("a cat --w 640", "width", 640),
        ("a cat --h 320", "height", 320),
        ("a cat --d 11", "seed", 11),
        ("a cat --seed 12", "seed", 12),
        ("a cat --l 2.5", "guidance_scale", 2.5),
        ("a cat --cfg 3", "guidance_scale", 3.0),
        ("a cat --s 9", "steps", 9),
        ("a cat --steps 10", "steps", 10),
        ("a cat --m 0.3", "network_multiplier", 0.3),
        ("a cat --network_multiplier 0.6", "network_multiplier", 0.6),
    ],
)
def test_each_prompt_flag_sets_its_field_and_leaves_the_text(prompt, field, expected):
    (spec,) = specs({**BASE_SAMPLE, "samples": [{"prompt": prompt}]})
    assert getattr(spec, field) == expected
    # _process_prompt_string: the text is the first piece, stripped.
    assert spec.prompt == "a cat"
    # Every other field keeps the sample-level value.
    untouched = {
        "negative_prompt": "",
        "width": 512,
        "height": 512,
        "seed": 3,
        "guidance_scale": 4.0,
        "steps": 20,
        "network_multiplier": 1.0,
    }
    untouched.pop(field)
    assert {k: getattr(spec, k) for k in untouched} == untouched


def test_flags_override_item_values_and_later_flags_win():
    item = {"prompt": "dog --w 320 --cfg 2 --w 256", "width": 128, "guidance_scale": 9}
    (spec,) = specs({**BASE_SAMPLE, "samples": [item]})
    # Flags are applied after the item's values; a repeated flag: the last assignment stays.
    assert (spec.width, spec.guidance_scale) == (256, 2.0)


def test_unknown_flags_are_ignored():
    (spec,) = specs({**BASE_SAMPLE, "samples": [{"prompt": "a cat --gr 0.7 --foo 3 --ev 1,2"}]})
    assert spec.prompt == "a cat"
    assert (spec.width, spec.height, spec.seed, spec.guidance_scale, spec.steps) == (
        512,
        512,
        3,
        4.0,
        20,
    )


def test_literal_double_dash_in_text_is_a_flag_boundary():
    # "red--blue --w 128".split("--") -> ["red", "blue ", "w 128"]: text "red", an unknown
    # flag "blue", and --w 128.
    text, flags = parse_prompt_flags("red--blue --w 128")
    assert text == "red"
    assert flags["w"] == "128"
    (a, b) = specs(
        {**BASE_SAMPLE, "samples": [{"prompt": "red--blue --w 128"}, {"prompt": "a -- b"}]}
    )
    assert (a.prompt, a.width) == ("red", 128)
    # "a -- b": the flag name is "" (the piece starts with a space); ignored.
    assert (b.prompt, b.width) == ("a", 512)


def test_prompt_is_stripped_before_splitting():
    (spec,) = specs({**BASE_SAMPLE, "samples": [{"prompt": "   a cat   --h 256  "}]})
    assert (spec.prompt, spec.height) == ("a cat", 256)


# ------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("size", "floored8"),
    [
        ((1000, 1000), (1000, 1000)),  # already multiples of 8
        ((1040, 720), (1040, 720)),
        ((80, 112), (80, 112)),
        ((72, 100), (72, 96)),  # 100 - 100 % 8 = 96
        ((100, 90), (96, 88)),
        ((50, 10), (64, 64)),  # under 64: the minimum
        ((63, 65), (64, 64)),  # 65 -> 64 by the floor, 63 -> 56 -> 64 by the minimum
    ],
)
def test_generate_image_config_floor_to_8_minimum_64(size, floored8):
    (spec,) = specs(
        {**BASE_SAMPLE, "samples": [{"prompt": "x", "width": size[0], "height": size[1]}]}
    )
    assert (spec.width, spec.height) == floored8
    assert (floor8(size[0]), floor8(size[1])) == floored8


def test_size_flags_are_floored_too():
    (spec,) = specs({**BASE_SAMPLE, "samples": [{"prompt": "x --w 131 --h 20"}]})
    assert (spec.width, spec.height) == (128, 64)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        # z_image.py floors again to get_bucket_divisibility(): 16 from 0.9.15.
        ("0.12.26", [(992, 992), (1040, 720), (80, 112), (64, 96), (64, 64)]),
        # 32 before ef57c107 (0.9.14): 1000 -> 992, 1040 -> 1024, 720 -> 704, 80 -> 64 ...
        ("0.9.10", [(992, 992), (1024, 704), (64, 96), (64, 96), (64, 64)]),
    ],
)
def test_preview_side_applies_the_model_floor_after_the_floor_to_8(tmp_path, version, expected):
    sizes = [(1000, 1000), (1040, 720), (80, 112), (72, 100), (50, 10)]
    sample = {
        **BASE_SAMPLE,
        "samples": [{"prompt": f"p{i}", "width": w, "height": h} for i, (w, h) in enumerate(sizes)],
    }
    job = read_job(make_job(tmp_path, sample, checkpoints={10: version}))
    ckpt = job.checkpoint_for_step(10)
    got = [(s.width, s.height) for s in (preview_settings(job, x, ckpt) for x in job.samples)]
    assert got == expected


# -------------------------------------------------------------------- seeds


def _seeds(sample):
    return [s.seed for s in specs(sample)]


def test_walk_seed_gives_seed_plus_index():
    sample = {"seed": 42, "walk_seed": True, "samples": [{"prompt": str(i)} for i in range(4)]}
    assert _seeds(sample) == [42, 43, 44, 45]


def test_without_walk_seed_every_item_gets_the_start_seed():
    sample = {"seed": 42, "samples": [{"prompt": str(i)} for i in range(3)]}
    assert _seeds(sample) == [42, 42, 42]


def test_default_seed_is_zero():
    assert _seeds({"samples": [{"prompt": "a"}, {"prompt": "b"}]}) == [0, 0]


def test_item_seed_carries_over_to_later_items_without_walk_seed():
    # sample(): `if sample_item.seed is not None: current_seed = sample_item.seed`, and
    # current_seed is only reset by walk_seed, so later items keep the item's seed.
    sample = {
        "seed": 100,
        "samples": [{"prompt": "a"}, {"prompt": "b", "seed": 5}, {"prompt": "c"}, {"prompt": "d"}],
    }
    assert _seeds(sample) == [100, 5, 5, 5]


def test_item_seed_zero_counts_as_a_seed():
    sample = {"seed": 100, "samples": [{"prompt": "a", "seed": 0}, {"prompt": "b"}]}
    assert _seeds(sample) == [0, 0]


def test_item_seed_with_walk_seed_applies_to_that_item_only():
    # walk_seed resets current_seed to start + i at every item.
    sample = {
        "seed": 100,
        "walk_seed": True,
        "samples": [{"prompt": "a"}, {"prompt": "b", "seed": 5}, {"prompt": "c"}],
    }
    assert _seeds(sample) == [100, 5, 102]


def test_flag_seed_does_not_change_the_running_seed():
    # --seed is parsed inside GenerateImageConfig, after current_seed was passed in.
    sample = {"seed": 100, "samples": [{"prompt": "a --seed 9"}, {"prompt": "b"}]}
    assert _seeds(sample) == [9, 100]
    (a, b) = specs(sample)
    assert a.explicit_seed and not b.explicit_seed


# ------------------------------------------------------------ legacy prompts


def test_legacy_prompts_list_uses_sample_level_values():
    sample = {
        "width": 256,
        "height": 128,
        "seed": 7,
        "walk_seed": True,
        "prompts": ["a", "b --s 3"],
    }
    a, b = specs(sample)
    assert (a.prompt, a.width, a.height, a.seed, a.steps) == ("a", 256, 128, 7, 20)
    assert (b.prompt, b.seed, b.steps) == ("b", 8, 3)


def test_samples_win_over_legacy_prompts():
    # raw_samples = kwargs.get('samples', default_samples_kwargs)
    (only,) = specs({"prompts": ["legacy"], "samples": [{"prompt": "new"}]})
    assert only.prompt == "new"


def test_item_fallbacks_and_defaults():
    # SampleConfig defaults: 512x512, cfg 7, 20 steps, multiplier 1, neg False.
    a, b = specs({"samples": [{"prompt": "a"}, {"prompt": "b", "neg": "bad", "sample_steps": 4}]})
    assert (a.width, a.height, a.guidance_scale, a.steps, a.network_multiplier) == (
        512,
        512,
        7.0,
        20,
        1.0,
    )
    assert a.negative_prompt == ""
    assert (b.negative_prompt, b.steps) == ("bad", 4)


# ------------------------------------------------------------------ trigger


def test_trigger_replaced_by_trigger_word_every_occurrence():
    (spec,) = specs({"samples": [{"prompt": "[trigger] and [trigger] --n no [trigger]"}]})
    assert spec.prompt == "sks and sks"
    # the negative comes from the prompt after substitution (inject before parsing flags)
    assert spec.negative_prompt == "no sks"
    # what a request carries: the text before substitution, flags removed
    assert spec.prompt_template == "[trigger] and [trigger]"


def test_trigger_not_prepended_when_absent():
    # sample() calls inject_trigger_into_prompt(..., add_if_not_present=False).
    (spec,) = specs({"samples": [{"prompt": "a photo"}]})
    assert spec.prompt == "a photo"


def test_name_tag_becomes_the_job_name():
    # toolkit/config.py preprocess_config replaces [name] with config.name at load time,
    # before any sampling-time substitution.
    (spec,) = specs({"samples": [{"prompt": "[name] style"}]}, name="myjob")
    assert spec.prompt == "myjob style"


def test_without_trigger_word_the_tag_stays_literal():
    (spec,) = specs({"samples": [{"prompt": "[trigger] a photo"}]}, trigger=None)
    assert spec.prompt == "[trigger] a photo"


# ------------------------------------------------------------- multipliers


def _merged(tmp_path, sample, **kw):
    return read_job(make_job(tmp_path, sample, **kw)).merged_lora


def test_lora_merged_when_every_item_shares_the_multiplier(tmp_path):
    sample = {
        "network_multiplier": 0.8,
        "samples": [{"prompt": "a"}, {"prompt": "b", "network_multiplier": 0.8}],
    }
    job = read_job(make_job(tmp_path, sample))
    assert job.merged_lora
    assert [s.network_multiplier for s in job.samples] == [0.8, 0.8]


def test_lora_unmerged_when_an_item_multiplier_differs(tmp_path):
    sample = {
        "network_multiplier": 1.0,
        "samples": [{"prompt": "a"}, {"prompt": "b", "network_multiplier": 0.5}],
    }
    assert not _merged(tmp_path, sample)


def test_lora_unmerged_when_a_flag_multiplier_differs(tmp_path):
    # generate_images compares gen_config.network_multiplier, i.e. after --m.
    sample = {"samples": [{"prompt": "a"}, {"prompt": "b --m 0.5"}]}
    assert not _merged(tmp_path, sample)


def test_lora_unmerged_when_quantized(tmp_path):
    # BaseSDTrainProcess: can_merge_in = False with model.quantize or layer_offloading.
    sample = {"samples": [{"prompt": "a"}]}
    assert not _merged(tmp_path, sample, model_extra={"quantize": True})


def test_string_multiplier_is_parsed_and_bad_one_falls_back_to_one():
    a, b = specs(
        {
            "samples": [
                {"prompt": "a", "network_multiplier": "0.7"},
                {"prompt": "b", "network_multiplier": "abc"},
            ]
        }
    )
    assert (a.network_multiplier, b.network_multiplier) == (0.7, 1.0)


# --------------------------------------------------------------- model id


@pytest.mark.parametrize(
    ("arch", "name_or_path", "expected"),
    [
        ("zimage", "Tongyi-MAI/Z-Image", "zimage"),
        ("zimage", "Tongyi-MAI/Z-Image-Turbo", "zimage_turbo"),
        ("zimage", "ostris/Z-Image-De-Turbo", "zimage_deturbo"),
        ("zimage:turbo", "Tongyi-MAI/Z-Image-Turbo", "zimage_turbo"),
        ("zimage:deturbo", "ostris/Z-Image-De-Turbo", "zimage_deturbo"),
        ("zimage:turbo", "/models/some_local_copy", "zimage_turbo"),
        ("zimage", "/models/z_image_turbo", "zimage_turbo"),
        ("zimage", "/models/z_image_de_turbo", "zimage_deturbo"),
    ],
)
def test_reference_model_from_arch_tag_and_name_or_path(arch, name_or_path, expected):
    assert reference_model_for(ZIMAGE, arch, name_or_path) == expected


def test_arch_tag_is_kept_apart_from_the_arch(tmp_path):
    job = read_job(
        make_job(
            tmp_path,
            {"samples": [{"prompt": "a"}]},
            arch="zimage:turbo",
            name_or_path="Tongyi-MAI/Z-Image-Turbo",
        )
    )
    assert (job.arch_tag, job.reference_model) == ("turbo", "zimage_turbo")


# ------------------------------------------------------------------- eras


@pytest.mark.parametrize(
    ("version", "guidance", "multiple", "legacy"),
    [
        ("0.7.10", "raw_gt1", 32, True),
        ("0.9.10", "raw", 32, True),
        ("0.9.15", "raw", 16, True),
        ("0.10.20", "raw", 16, True),
        ("0.10.21", "minus_one", 16, True),  # 6233efe1 bumped 0.10.20 -> 0.10.21
        ("0.10.22", "minus_one", 16, True),
        ("0.10.25", "minus_one", 16, False),
        ("0.12.26", "minus_one", 16, False),
    ],
)
def test_era_table(version, guidance, multiple, legacy):
    era = era_for_version(version)
    assert (era.guidance, era.size_multiple, era.legacy_sigmas) == (guidance, multiple, legacy)


@pytest.mark.parametrize(
    ("version", "cfg", "pipeline"),
    [
        ("0.12.26", 4, 3.0),  # max(0, 4 - 1)
        ("0.12.26", 1, 0.0),
        ("0.12.26", 0, 0.0),  # max(0, -1)
        ("0.10.22", 2.5, 1.5),
        ("0.9.10", 4, 4.0),  # passed unchanged
        ("0.9.10", 0.5, 0.5),
    ],
)
def test_preview_pipeline_guidance_per_era(tmp_path, version, cfg, pipeline):
    job = read_job(
        make_job(
            tmp_path,
            {"guidance_scale": cfg, "samples": [{"prompt": "a"}]},
            checkpoints={10: version},
        )
    )
    settings = preview_settings(job, job.samples[0], job.checkpoint_for_step(10))
    assert settings.pipeline_guidance == pipeline
    # N-1 updates for older diffusers pins shows as an explicit legacy schedule
    assert (settings.sigmas is not None) == (version in ("0.10.22", "0.9.10"))
    assert settings.scheduler_shift == 3.0


# ------------------------------------------------------------ checkpoints


def test_checkpoint_discovery(tmp_path):
    folder = make_job(
        tmp_path,
        {"samples": [{"prompt": "a"}]},
        checkpoints={10: "0.10.22", 20: "0.12.26"},
        final=(30, "0.12.26"),
    )
    # not this job's name, or not a checkpoint name: ignored
    write_aitk_lora(folder / "other_000000015.safetensors", TINY_BASE, step=15)
    write_aitk_lora(folder / "job_10.safetensors", TINY_BASE, step=10)
    (folder / "job_000000010_optimizer.pt").write_bytes(b"\x80\x04not a model")
    job = read_job(folder)
    assert [c.step for c in job.checkpoints] == [10, 20, 30]
    assert [c.is_final for c in job.checkpoints] == [False, False, True]
    # the final file's step comes from its training_info metadata
    assert job.checkpoints[-1].path.name == "job.safetensors"
    assert [c.aitk_version for c in job.checkpoints] == ["0.10.22", "0.12.26", "0.12.26"]
    assert job.aitk_version == "0.12.26"
    assert job.checkpoint_for_step(20).path.name == "job_000000020.safetensors"
    assert job.checkpoint_for_step(0) is None


def test_final_checkpoint_of_a_saved_step_prefers_the_step_file(tmp_path):
    folder = make_job(
        tmp_path, {"samples": [{"prompt": "a"}]}, checkpoints={20: "0.12.26"}, final=(20, "0.12.26")
    )
    (ckpt,) = read_job(folder).checkpoints
    assert (ckpt.step, ckpt.path.name) == (20, "job_000000020.safetensors")


def test_final_checkpoint_without_training_info_is_reported(tmp_path):
    from safetensors.numpy import save_file

    folder = make_job(tmp_path, {"samples": [{"prompt": "a"}]}, checkpoints={10: "0.12.26"})
    save_file(
        {"x": np.zeros(2, dtype=np.float32)},
        str(folder / "job.safetensors"),
        metadata={"format": "pt"},
    )
    job = read_job(folder)
    assert [c.step for c in job.checkpoints] == [10]
    assert any("job.safetensors" in p for p in job.problems)


# --------------------------------------------------------------- previews


def test_preview_discovery_ignores_thumbs_tmp_and_other_files(tmp_path):
    folder = make_job(
        tmp_path, {"samples": [{"prompt": "a"}, {"prompt": "b"}]}, previews={0: 2, 10: 2}
    )
    (folder / "samples" / "notes.txt").write_text("x")
    (folder / "samples" / "1795416356999__000000010_0.txt.bak").write_text("x")
    job = read_job(folder)
    assert sorted((p.step, p.index) for p in job.previews) == [(0, 0), (0, 1), (10, 0), (10, 1)]
    assert all(p.path.parent == folder.resolve() / "samples" for p in job.previews)
    assert job.steps == [0, 10]


def test_preview_extension_follows_the_sample_format(tmp_path):
    folder = make_job(tmp_path, {"format": "png", "samples": [{"prompt": "a"}]})
    Image.new("RGB", (64, 64)).save(folder / "samples" / "1795416356582__000000020_0.png")
    (preview,) = read_job(folder).previews
    assert (preview.step, preview.index, preview.ext) == (20, 0, "png")


# ----------------------------------------------------------- config files


def test_yaml_exponents_load_as_floats(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a: 1e-4\nb: 5e0\nc: 2.5E+2\nd: '1e-4'\n", encoding="utf-8")
    data = load_job_file(path)
    # toolkit/config.py fixed_loader: exponent without a dot is a float
    assert data == {"a": 1e-4, "b": 5.0, "c": 250.0, "d": "1e-4"}
    assert isinstance(data["b"], float)


def test_yaml_python_tag_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "config.yaml"
    path.write_text(f"job: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(JobError) as err:
        load_job_file(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_json_job_file_reads_like_yaml(tmp_path):
    folder = tmp_path / "jj"
    folder.mkdir()
    config = job_config(name="jj", sample={"seed": 4, "samples": [{"prompt": "[trigger] x"}]})
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    job = read_job(folder)
    assert (job.name, job.samples[0].prompt, job.samples[0].seed) == ("jj", "sks x", 4)


def test_missing_config_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="empty"):
        read_job(tmp_path / "empty")
    with pytest.raises(JobError, match="nowhere"):
        read_job(tmp_path / "nowhere")


def test_unparsable_config_names_the_file(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.yaml").write_text("config: [unclosed\n", encoding="utf-8")
    with pytest.raises(JobError, match=r"config\.yaml"):
        read_job(folder)


def test_unknown_arch_and_missing_sample_section(tmp_path):
    sd3 = make_job(tmp_path, {"samples": [{"prompt": "a"}]}, name="sd3job", arch="sd3")
    with pytest.raises(JobError, match="'sd3'.*zimage.*flux") as err:
        read_job(sd3)
    assert "config.yaml" in str(err.value)
    nosample = make_job(tmp_path, {"samples": []}, name="nos")
    config = yaml.safe_load((nosample / "config.yaml").read_text())
    del config["config"]["process"][0]["sample"]
    (nosample / "config.yaml").write_text(yaml.dump(config))
    with pytest.raises(JobError, match="sample"):
        read_job(nosample)


# ------------------------------------------------------------- the real job


def test_real_job_reads_as_ai_toolkit_read_it():
    """fixtures/aitk_real/output/aitk_zimage/config.yaml, resolved by hand.

    Sample level: 64x64, seed 42, walk_seed, cfg 4, 6 steps, neg '', multiplier 1.0;
    trigger_word sks.
    """
    job = read_job(AITK_REAL_JOB)
    assert (job.name, job.arch, job.reference_model, job.trigger_word) == (
        "aitk_zimage",
        "zimage",
        "zimage",
        "sks",
    )
    rows = [
        (
            s.prompt,
            s.negative_prompt,
            s.width,
            s.height,
            s.seed,
            s.guidance_scale,
            s.steps,
            s.network_multiplier,
        )
        for s in job.samples
    ]
    assert rows == [
        # item 0: all sample-level values, seed 42 + 0
        ("sks a red cube on a table", "", 64, 64, 42, 4.0, 6, 1.0),
        # item 1: its own 80x112 (multiples of 8), cfg 0, seed 42 + 1
        ("sks a blue sphere", "", 80, 112, 43, 0.0, 6, 1.0),
        # item 2: multiplier 0.5, seed 44
        ("sks a green cone in a field", "", 64, 64, 44, 0.0, 6, 0.5),
        # item 3: --seed 7 --steps 4 flags
        ("sks a wooden house", "", 64, 64, 7, 0.0, 4, 1.0),
        # item 4: 100x90 -> 96x88; --n blurry --cfg 2.5; seed 42 + 4 (the flag seed of
        # item 3 did not touch the running seed)
        ("sks a cat at night", "blurry", 96, 88, 46, 2.5, 6, 1.0),
    ]
    # item 2's 0.5 differs from the others' 1.0: the LoRA runs unmerged for every item
    assert not job.merged_lora
    assert job.train_dtype == "fp32"
    assert (job.quantization.qtype, job.quantization.qtype_te) == (None, None)
    # two LoRA files: step 10 and the final one, step 20 from training_info
    assert [(c.step, c.is_final) for c in job.checkpoints] == [(10, False), (20, True)]
    assert job.aitk_version == "0.12.26"
    # 15 previews (5 samples x steps 0, 10, 20); .thumbs/ ignored
    assert len(job.previews) == 15
    assert job.steps == [0, 10, 20]
    assert sorted((p.step, p.index) for p in job.previews) == [
        (s, i) for s in (0, 10, 20) for i in range(5)
    ]
    # preview side of item 4 at step 20: floor to 16 -> 96x80, pipeline cfg 2.5 - 1
    p4 = preview_settings(job, job.samples[4], job.checkpoint_for_step(20))
    assert (p4.width, p4.height, p4.pipeline_guidance) == (96, 80, 1.5)
    assert p4.lora is not None and not p4.lora.merged and p4.lora.scale == 1.0
