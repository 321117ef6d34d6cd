"""The request the user really sent: ``--request``, ``--lora-root``, corrected requests the
server takes unchanged, ``--served`` images and ``--server-diffusers``.

Requests are written the way the server's docs write them: the LoRA path relative to the
server's workflows folder (the training folder, ``<job name>/<file>``), one prompt per
sample item, prompts copied verbatim with their ``--flags``. Expected causes come from the
real ai-toolkit job's config.yaml read with ai-toolkit's and the server's rules (see the
comments), never from parity's output.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REQUEST
from PIL import Image

from parity.cli import main
from parity.compare import Thresholds, compare, inspect_codec, load_rgb
from parity.job import read_job
from parity.plan import match_request
from parity.server import validate_request
from parity.testing.jobs import AITK_REAL_BASE, AITK_REAL_JOB, TINY_BASE, write_job
from parity.zimage.diffusers_era import diffusers_era

#: The server's workflows folder for the real job: its training folder.
LORA_ROOT = AITK_REAL_JOB.parent

#: The causes of each preview of step 10 against REQUEST (ai-toolkit 0.12.26: guidance
#: max(0, g - 1), sizes floored to 16, N updates; the server: guidance as sent, floor 32):
#:  0: cfg 4 -> diffusers gets 3 from ai-toolkit, 4 from the server.
#:  1: 80x112 -> the server floors to 64x96.
#:  2: the item's network_multiplier 0.5 vs the request's one LoRA at 1.
#:  3: the server renders "--seed 7 --steps 4" as text (prompt); the flags meant seed 7
#:     and 4 steps, the request says seed 45 and 6 steps (seed, steps).
#:  4: the flags as text, and "--n blurry" was the preview's negative prompt (prompt);
#:     "--cfg 2.5" gave diffusers 1.5, the request 4 (cfg); 100x90 -> 96x80 vs 96x64.
REQUEST_CAUSES = {
    0: ["cfg"],
    1: ["snapping"],
    2: ["lora_scale"],
    3: ["prompt", "seed", "steps"],
    4: ["cfg", "prompt", "snapping"],
}

COMMON = ["--base-model", str(AITK_REAL_BASE), "--device", "cpu", "--no-history"]


def _write(path: Path, body: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2), encoding="utf-8")
    return path


def _rows(out: Path) -> dict[int, dict]:
    return {r["index"]: r for r in json.loads((out / "results.json").read_text())}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def request_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("request")
    request = _write(root / "sent" / "request.json", REQUEST)
    out = root / "run"
    status = main(
        ["run", str(AITK_REAL_JOB), "--request", str(request), "--out", str(out), *COMMON]
    )
    assert status == 1
    return request, out


# ----------------------------------------------------------------------- the causes


def test_request_as_the_docs_write_it_names_the_causes_exactly(request_run):
    request, out = request_run
    rows = _rows(out)
    # Without --steps, the run covers the step the request names.
    assert {r["step"] for r in rows.values()} == {10} and sorted(rows) == [0, 1, 2, 3, 4]
    for index, expected in REQUEST_CAUSES.items():
        row = rows[index]
        assert (row["verdict"], row["causes"], row["explained"]) == (
            "mismatch",
            expected,
            True,
        ), (index, row["detail"])
        assert row["request"] == {"file": str(request), "prompt": index}
    # The reference side really is the request: its prompt text, flags included.
    everything = next(c for c in rows[3]["counterfactuals"] if c["cause"] == "all")
    assert everything["settings"]["prompt"] == "sks a wooden house"
    without_prompt = next(c for c in rows[3]["counterfactuals"] if c["cause"] == "prompt")
    assert without_prompt["settings"]["prompt"] == "sks a wooden house --seed 7 --steps 4"
    info = json.loads((out / "run.json").read_text())
    assert info["options"]["request"] == [str(request)]
    assert info["requests"][0]["step"] == 10 and info["lora_root"] == str(LORA_ROOT)
    assert json.loads((out / info["requests"][0]["copy"]).read_text()) == REQUEST


def test_every_corrected_request_file_reproduces_what_it_claims(request_run, tmp_path):
    _, out = request_run
    rows = _rows(out)
    index = json.loads((out / "corrected_requests" / "10.json").read_text())
    assert (
        set(index) == {"step", "placement", "cannot_reproduce", "closest"} and index["step"] == 10
    )
    assert sorted(index["closest"]) == sorted(index["cannot_reproduce"])
    # Every preview is placed in a request that reproduces it or named with a reason.
    assert sorted(index["placement"]) == ["0", "2", "3"]
    assert sorted(index["cannot_reproduce"]) == ["1", "4"]
    assert "not a multiple of 32" in index["cannot_reproduce"]["1"][0]
    files = sorted(p.relative_to(out / "corrected_requests").as_posix()
                   for p in (out / "corrected_requests" / "10").glob("*.json"))  # fmt: skip
    assert {place["file"] for place in index["placement"].values()} <= set(files)
    for name in files:
        body = json.loads((out / "corrected_requests" / name).read_text())
        validate_request(body, source=name)  # a plain request the server takes
        assert body["loras"][0]["path"] == "aitk_zimage/aitk_zimage_000000010.safetensors"
        # Flags resolved into fields: the prompt is text only.
        assert not any("--" in p["prompt"] for p in body["prompts"])
        rendered = tmp_path / name.replace("/", "_")
        command = ["render", str(out / "corrected_requests" / name), "--lora-root"]
        assert main([*command, str(LORA_ROOT), "--out", str(rendered), *COMMON[:4]]) == 0
        for preview, place in index["placement"].items():
            if place["file"] != name:
                continue
            row = rows[int(preview)]
            image = _pixels(rendered / f"{place['prompt']}.png")
            # The same process renders bit-identically: the server-side render of the
            # corrected prompt is parity's all-causes-switched counterfactual.
            everything = next(c for c in row["counterfactuals"] if c["cause"] == "all")
            assert np.array_equal(image, _pixels(out / everything["image"])), preview
            stored = out / row["preview"]
            scores = compare(load_rgb(stored), image, codec=inspect_codec(stored))
            assert Thresholds().is_match(scores), (preview, scores)


def test_corrected_requests_sent_back_reproduce_their_previews(request_run, tmp_path):
    """Send the corrected files back as --request (several per step, so --match prompt):
    the placed previews match, the others keep only what no request can change."""
    _, out = request_run
    index = json.loads((out / "corrected_requests" / "10.json").read_text())
    files = sorted((out / "corrected_requests" / "10").glob("*.json"))
    assert len(files) == 3  # scale 1, scale 0.5, and the closest prompts of 1 and 4
    args = [a for f in files for a in ("--request", str(f))]
    run = tmp_path / "again"
    status = main(
        ["run", str(AITK_REAL_JOB), *args, "--match", "prompt", "--out", str(run), *COMMON]
    )
    assert status == 1
    rows = _rows(run)
    for preview in index["placement"]:
        assert rows[int(preview)]["verdict"] == "match", rows[int(preview)]["detail"]
    for preview in index["cannot_reproduce"]:
        assert rows[int(preview)]["causes"] == ["snapping"]


# ------------------------------------------------------------- pairing and errors


def test_extra_prompts_and_previews_without_a_prompt_are_reported(tmp_path, capsys):
    short = _write(tmp_path / "short.json", {**REQUEST, "prompts": REQUEST["prompts"][:4]})
    out = tmp_path / "short"
    args = ["run", str(AITK_REAL_JOB), "--no-attribution", *COMMON]
    assert main([*args, "--request", str(short), "--out", str(out)]) == 1
    rows = _rows(out)
    assert [rows[i]["verdict"] for i in range(4)] == ["mismatch"] * 4
    assert rows[4]["verdict"] == "error"
    assert f"no prompt 4 in {short} (4 prompts" in rows[4]["detail"]
    assert rows[4]["preview"].startswith("previews/10/")  # kept for the report
    extra = {"prompt": "[trigger] an extra prompt", "width": 64, "height": 64}
    long = _write(tmp_path / "long.json", {**REQUEST, "prompts": [*REQUEST["prompts"], extra]})
    capsys.readouterr()
    assert main([*args, "--request", str(long), "--out", str(tmp_path / "long")]) == 1
    err = capsys.readouterr().err
    assert f"warning: {long} prompt 5: step 10 has no preview 5; it is not compared" in err
    info = json.loads((tmp_path / "long" / "run.json").read_text())
    assert info["unmatched_prompts"] == [
        {"file": str(long), "prompt": 5, "text": "sks an extra prompt",
         "reason": "step 10 has no preview 5"}
    ]  # fmt: skip
    assert len(_rows(tmp_path / "long")) == 5


def test_requests_that_cannot_apply_are_exit_2_with_one_line(tmp_path, capsys):
    def run(body: dict, *extra: str) -> str:
        request = _write(tmp_path / "request.json", body)
        capsys.readouterr()
        status = main(["run", str(AITK_REAL_JOB), "--request", str(request), *COMMON, *extra])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("parity: error:")]
        assert status == 2 and len(errors) == 1, err
        return errors[0]

    other = {**REQUEST, "loras": [{"path": "aitk_zimage/aitk_zimage_000000030.safetensors"}]}
    err = run(other)
    assert "request.json" in err and "names no checkpoint of job aitk_zimage" in err
    assert "aitk_zimage/aitk_zimage_000000010.safetensors" in err
    assert "aitk_zimage/aitk_zimage.safetensors" in err
    err = run({**REQUEST, "loras": [{"path": "../../tiny_zimage/x.safetensors"}]})
    assert "outside the LoRA root" in err and "--allow-outside-paths" in err
    err = run({**REQUEST, "model": "zimage_turbo"})
    assert "model 'zimage_turbo'" in err and "Tongyi-MAI/Z-Image" in err
    err = run(REQUEST, "--steps", "20")
    assert "names the checkpoint of step 10, which --steps leaves out (20)" in err
    err = run(REQUEST, "--served", str(tmp_path), "--served", str(tmp_path))
    assert "got 2 --served for 1 --request" in err
    # A LoRA that is not a usable safetensors file is found before the model loads.
    workflows = tmp_path / "workflows"
    (workflows / "aitk_zimage").mkdir(parents=True)
    (workflows / "aitk_zimage" / "aitk_zimage_000000010.safetensors").write_bytes(b"\0" * 64)
    err = run(REQUEST, "--lora-root", str(workflows))
    assert "request.json" in err and "not a readable safetensors file" in err


def test_match_request_names_the_step_of_the_checkpoint(tmp_path):
    job = read_job(AITK_REAL_JOB)

    def step(path: str, root: Path = LORA_ROOT) -> int | None:
        body = {**REQUEST, "loras": [{"path": path}]}
        return match_request(job, validate_request(body), root)

    assert step("aitk_zimage/aitk_zimage_000000010.safetensors") == 10
    # The final file is the last step's checkpoint (training_info says 20).
    assert step("aitk_zimage/aitk_zimage.safetensors") == 20
    assert step(str(AITK_REAL_JOB / "aitk_zimage.safetensors")) == 20  # absolute
    assert step("other_job/aitk_zimage.safetensors") is None
    assert step("aitk_zimage_000000010.safetensors") is None  # not under the root
    assert step("aitk_zimage_000000010.safetensors", AITK_REAL_JOB) == 10
    # A copy in the server's own workflows folder, as <job name>/<file>.
    copy = tmp_path / "aitk_zimage" / "aitk_zimage_000000010.safetensors"
    copy.parent.mkdir()
    shutil.copy(AITK_REAL_JOB / copy.name, copy)
    assert step("aitk_zimage/aitk_zimage_000000010.safetensors", tmp_path) == 10


def test_render_resolves_lora_paths_under_the_lora_root(tmp_path, capsys):
    request = _write(
        tmp_path / "elsewhere" / "request.json", {**REQUEST, "prompts": REQUEST["prompts"][:1]}
    )
    render = ["render", str(request), *COMMON[:4], "--out"]
    # By default the request's own folder is the root: the job's LoRA is not there.
    assert main([*render, str(tmp_path / "a")]) == 2
    assert "LoRA file not found" in capsys.readouterr().err
    assert main([*render, str(tmp_path / "b"), "--lora-root", str(LORA_ROOT)]) == 0
    effective = json.loads((tmp_path / "b" / "effective.json").read_text())
    lora = effective[0]["settings"]["lora"]["path"]
    assert lora == str(AITK_REAL_JOB / "aitk_zimage_000000010.safetensors")


# ------------------------------------------------------------------- served images


def test_served_images_same_then_drift(request_run, tmp_path, capsys):
    request, _ = request_run
    served = tmp_path / "served"
    render = ["render", str(request), "--lora-root", str(LORA_ROOT), *COMMON[:4]]
    assert main([*render, "--out", str(served)]) == 0
    # The server writes JPEG quality 95.
    jpeg = tmp_path / "served_jpeg"
    jpeg.mkdir()
    for png in served.glob("*.png"):
        Image.open(png).save(jpeg / f"{png.stem}.jpg", quality=95)
    # The same images, each under the next prompt's number.
    shifted = tmp_path / "served_shifted"
    shifted.mkdir()
    for i in range(5):
        shutil.copy(served / f"{(i + 1) % 5}.png", shifted / f"{i}.png")

    def run(folder: Path, name: str) -> dict[int, dict]:
        out = tmp_path / name
        args = ["run", str(AITK_REAL_JOB), "--request", str(request), "--served", str(folder)]
        main([*args, "--no-attribution", "--out", str(out), *COMMON])
        return _rows(out)

    for row in run(served, "same").values():
        assert row["served"]["verdict"] == "same" and row["served"]["max_abs_diff"] == 0
        assert set(row["served"]) == {"verdict", "ssim", "psnr", "max_abs_diff", "path"}
        assert (tmp_path / "same" / row["served"]["path"]).is_file()
        assert row["served_note"] == ""
    for row in run(jpeg, "jpeg").values():
        assert row["served"]["verdict"] == "same", row["served"]
        assert row["served"]["ssim"] > 0.99
    rows = run(shifted, "shifted")
    capsys.readouterr()
    for row in rows.values():
        assert row["served"]["verdict"] == "drift", row["served"]
        assert "the deployed server is not the reference parity renders" in row["served_note"]
        for suspect in ("dtype", "library era", "hardware"):
            assert suspect in row["served_note"]
    assert rows[0]["served"]["max_abs_diff"] is None  # 64x64 against 64x96: sizes differ
    assert rows[2]["served"]["max_abs_diff"] > 10
    html = (tmp_path / "shifted" / "report.html").read_text(encoding="utf-8")
    assert "the deployed server is not the reference parity renders" in html
    info = json.loads((tmp_path / "shifted" / "run.json").read_text())
    assert info["served_drift"] == 5
    status = main(
        ["explain", str(AITK_REAL_JOB), "--index", "2", "--request", str(request),
         "--served", str(shifted), "--out", str(tmp_path / "explain"), *COMMON[:4]]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "served image" in out and "DRIFT" in out
    assert "the deployed server is not the reference parity renders" in out


# ------------------------------------------------------------ the server's diffusers


def test_diffusers_eras_follow_the_release_history():
    # (N-1 updates for N steps, CFG threshold) read from the diffusers history.
    expected = {
        "0.36.0": (True, 1.0),
        "0.37.0": (True, 0.0),
        "0.38.0.dev0": (True, 0.0),
        "072d15ee": (True, 0.0),  # runcomfy's requirements-inference.txt
        "dc8d9032": (True, 0.0),
        "c943837": (False, 0.0),  # ai-toolkit's later pin
        "0.39.0": (False, 0.0),
        "0.42.1": (False, 0.0),
    }
    for spec, (legacy, threshold) in expected.items():
        era = diffusers_era(spec)
        assert (era.legacy_sigmas, era.cfg_threshold) == (legacy, threshold), spec
    assert "97c2c6e" in diffusers_era("0.37.0.dev0").note
    assert "32ecbe3" in diffusers_era("0.39.0.dev0").note
    installed = diffusers_era(None)
    assert not installed.legacy_sigmas and installed.cfg_threshold == 0.0
    # g = 1 is no CFG on a g > 1 release, CFG with weight 1 on later ones.
    assert diffusers_era("0.36.0").pipeline_guidance(1.0) == 0.0
    assert diffusers_era("0.42.1").pipeline_guidance(1.0) == 1.0
    assert diffusers_era("0.36.0").request_guidance(0.5) is None
    for bad in ("banana", "0.35.2", "abcdef1234"):
        with pytest.raises(Exception, match="server-diffusers"):
            diffusers_era(bad)


def test_another_diffusers_era_on_the_server_is_the_library_cause(tmp_path):
    out = tmp_path / "era"
    args = ["run", str(AITK_REAL_JOB), "--steps", "10", "--server-diffusers", "072d15ee"]
    assert main([*args, "--out", str(out), *COMMON]) == 1
    rows = _rows(out)
    # ai-toolkit 0.12.26's diffusers made N updates, 072d15ee makes N-1: every preview
    # gets library on top of the as-configured causes (preview 3 had none).
    expected = {0: ["cfg"], 1: ["snapping"], 2: ["lora_scale"], 3: [], 4: ["cfg", "snapping"]}
    for index, causes in expected.items():
        assert rows[index]["causes"] == sorted([*causes, "library"]), index
        assert rows[index]["explained"] is True
    index = json.loads((out / "corrected_requests" / "10.json").read_text())
    assert index["placement"] == {}
    for reasons in index["cannot_reproduce"].values():
        assert any("makes N-1" in r for r in reasons)
    info = json.loads((out / "run.json").read_text())
    assert info["server_diffusers"]["legacy_sigmas"] is True
    assert info["options"]["server_diffusers"] == "072d15ee"


def test_the_cfg_threshold_is_in_the_guidance_diffusers_receives(tmp_path):
    # ai-toolkit (0.12.26) gives diffusers max(0, 2 - 1) = 1: CFG with weight 1. The
    # request says 1: a g > 0 server runs CFG with weight 1 too, a 0.36 server (CFG only
    # for g > 1) runs none.
    sample = {"width": 64, "height": 64, "seed": 3, "guidance_scale": 2, "sample_steps": 4,
              "neg": "", "samples": [{"prompt": "[trigger] a lighthouse"}]}  # fmt: skip
    folder = write_job(tmp_path, name="cfg_era", sample=sample)
    body = {"model": "zimage", "trigger_word": "sks",
            "loras": [{"path": "cfg_era/cfg_era_000000010.safetensors"}],
            "prompts": [{"prompt": "[trigger] a lighthouse", "width": 64, "height": 64,
                         "seed": 3, "sample_steps": 4, "guidance_scale": 1}]}  # fmt: skip
    request = _write(tmp_path / "request.json", body)
    base = ["run", str(folder), "--request", str(request), "--base-model", str(TINY_BASE)]
    base += ["--device", "cpu", "--no-history"]
    assert main([*base, "--out", str(tmp_path / "now")]) == 0
    assert main([*base, "--server-diffusers", "0.42.1", "--out", str(tmp_path / "same")]) == 0
    assert main([*base, "--server-diffusers", "0.36.0", "--out", str(tmp_path / "old")]) == 1
    row = _rows(tmp_path / "old")[0]
    assert row["causes"] == ["cfg", "library"]
    without_cfg = next(c for c in row["counterfactuals"] if c["cause"] == "cfg")
    assert without_cfg["settings"]["pipeline_guidance"] == 0.0
    reasons = json.loads((tmp_path / "old" / "corrected_requests" / "10.json").read_text())
    assert re.search(r"runs CFG only for g > 1", " ".join(reasons["cannot_reproduce"]["0"]))


def test_library_and_steps_switch_independently():
    from parity.attribute import switch
    from parity.settings import Cause, RenderSettings, legacy_sigmas

    reference = RenderSettings("a", "", 64, 64, 0.0, steps=8, seed=1, family="zimage")  # N updates
    preview = reference.replace(steps=6, sigmas=legacy_sigmas(6))  # 5 updates for 6 steps
    steps_only = switch(reference, preview, [Cause.STEPS])
    assert (steps_only.steps, steps_only.sigmas) == (6, None)
    era_only = switch(reference, preview, [Cause.LIBRARY])
    assert (era_only.steps, era_only.sigmas) == (8, legacy_sigmas(8))
    both = switch(reference, preview, [Cause.STEPS, Cause.LIBRARY])
    assert (both.steps, both.sigmas) == (6, legacy_sigmas(6))
    # Leaving steps at the server's value on a legacy server keeps its schedule's length.
    legacy_server = reference.replace(sigmas=legacy_sigmas(8))
    assert switch(legacy_server, preview.replace(sigmas=None), [Cause.STEPS]).sigmas == (
        legacy_sigmas(6)
    )


def test_run_job_refuses_a_request_of_a_step_the_run_leaves_out(tmp_path):
    """The rule is the library's: run_job (the fleet worker's and the plugin's way in)
    refuses as ``parity run`` does, before any model loads."""
    from parity.errors import RequestStepError
    from parity.plan import bind_requests
    from parity.render.engine import RenderEngine
    from parity.run import RunOptions, run_job

    job = read_job(AITK_REAL_JOB)
    request = _write(tmp_path / "request.json", REQUEST)
    requests = bind_requests([job], [request], lora_root=LORA_ROOT)[job.name]
    engine = RenderEngine(str(AITK_REAL_BASE), device="cpu", family=job.family)
    with pytest.raises(RequestStepError) as refused:
        run_job(job, engine, tmp_path / "out", RunOptions(steps=(20,)), requests=requests)
    assert "names the checkpoint of step 10, which --steps leaves out (20)" in str(refused.value)
    assert not (tmp_path / "out").exists()
