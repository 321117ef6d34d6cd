"""run.json as a record (:class:`parity.run_info.RunInfo`): what a real run writes reads
back as the same file, key for key, and a broken run.json is one line naming it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from parity.cli import main
from parity.errors import ParityError
from parity.run_info import RUN_FILE, RunInfo
from parity.testing.jobs import AITK_REAL_BASE, AITK_REAL_JOB

#: The keys of a finished one-job run's run.json, in order (docs/run-folder.md): a
#: contract other tools read, which the record must not change.
RUN_KEYS = [
    "options",
    "stack",
    "model_source",
    "job",
    "job_path",
    "started",
    "finished",
    "parity_version",
    "device",
    "reference_model",
    "aitk_version",
    "steps",
    "thresholds",
    "confirm_margin",
    "noise_floor_k",
    "attribution",
    "server_diffusers",
    "lora_root",
    "match",
    "counts",
]

#: Keys a run writes only with --request (the request plan, then served drift), and
#: those a fleet's driver adds.
REQUEST_KEYS = ["requests", "unmatched_prompts", "unmatched_previews", "served_missing"]
FLEET_KEYS = ["worker", "attempts"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    argv = ["run", str(AITK_REAL_JOB), "--base-model", str(AITK_REAL_BASE)]
    status = main([*argv, "--device", "cpu", "--out", str(out), "--no-history"])
    assert status == 1  # the real job's previews have mismatches (test_aitk_real)
    return out


def test_a_real_run_json_reads_back_key_for_key(real_run):
    text = (real_run / RUN_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    assert list(data) == RUN_KEYS
    info = RunInfo.read(real_run)
    assert info.job_path == str(AITK_REAL_JOB) and info.finished is not None
    assert info.steps == (0, 10, 20) and info.counts == data["counts"]
    assert list(info.to_json()) == RUN_KEYS
    assert info.to_json() == data
    assert info.to_text() == text  # written back, the file is byte for byte the same


def test_run_info_round_trips(real_run, tmp_path):
    info = replace(
        RunInfo.read(real_run),
        requests=[{"file": "/r.json", "step": 10, "lora": "a.safetensors", "prompts": 5}],
        unmatched_prompts=[],
        unmatched_previews=[{"step": 10, "index": 4, "reason": "no prompt"}],
        served_missing=[],
        served_drift=0,
        worker="local-0",
        attempts=2,
        extra={"written_by_a_newer_parity": {"kept": True}},
    )
    path = info.write(tmp_path)
    assert path == tmp_path / RUN_FILE
    again = RunInfo.read(tmp_path)
    assert again == info
    assert list(again.to_json()) == [
        *RUN_KEYS[:-1],
        *REQUEST_KEYS,
        "counts",
        "served_drift",
        *FLEET_KEYS,
        "written_by_a_newer_parity",
    ]


def test_keys_after_match_are_written_only_once_set():
    data = RunInfo().to_json()
    assert list(data) == RUN_KEYS[:-1]
    assert data["finished"] is None  # a running run says so: null, not absent


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "{folder}: no run.json to resume from; start the run again without --resume"),
        ("{not json", "{folder}/run.json: unreadable ("),
        ("[1, 2]", "{folder}/run.json: not a parity run.json; start the run again"),
    ],
    ids=["missing", "unreadable", "not-an-object"],
)
def test_a_broken_run_json_is_one_line_naming_it(tmp_path, capsys, content, message):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is not None:
        (folder / RUN_FILE).write_text(content, encoding="utf-8")
    expected = message.format(folder=folder)
    with pytest.raises(ParityError, match="start the run again") as caught:
        RunInfo.read(folder)
    assert str(caught.value).startswith(expected)
    capsys.readouterr()
    assert main(["run", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"parity: error: {expected}"), err
    assert "start the run again" in err


def test_a_broken_run_json_in_a_multi_job_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "job_a").mkdir()
    (tmp_path / "job_a" / RUN_FILE).write_text("{", encoding="utf-8")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"parity: error: {tmp_path / 'job_a' / RUN_FILE}: unreadable (")
    assert err.rstrip().endswith("start the run again")


def test_result_rows_keep_notes_served_and_rounding_as_data(tmp_path) -> None:
    """A row's notes, served image and rounding weighing are typed records that
    round-trip results.json; results.csv's detail column joins the notes."""
    from parity.results import (
        ResultRow,
        RoundingResult,
        ServedResult,
        Verdict,
        read_results,
        write_results,
    )

    row = ResultRow(
        job="j",
        step=10,
        index=0,
        verdict=Verdict.MISMATCH,
        notes=("first fact", "second fact; with a semicolon"),
        served=ServedResult("drift", 0.91, 30.5, 12, "served/0/0.png"),
        rounding=RoundingResult("BF16", 3, 0.02, 0.01, True),
    )
    write_results(tmp_path, [row])
    [back] = read_results(tmp_path)
    assert back.notes == row.notes and back.served == row.served
    assert back.rounding == row.rounding and back.served.drift
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))[0]
    assert raw["detail"] == "first fact; second fact; with a semicolon"
    assert raw["served"]["verdict"] == "drift" and raw["rounding"]["draws"] == 3
    csv_text = (tmp_path / "results.csv").read_text(encoding="utf-8")
    assert "first fact; second fact; with a semicolon" in csv_text


def test_a_result_row_is_frozen_and_a_later_stage_makes_a_new_one(tmp_path) -> None:
    """A row the runner wrote is never edited: assigning a field raises, its sequences
    are tuples, and a note makes a new row; results.json keeps its lists and is read back
    to equal rows."""
    import dataclasses

    from parity.results import ResultRow, Verdict, read_results, write_results
    from parity.settings import Cause

    row = ResultRow(job="j", step=10, index=0, verdict=Verdict.MISMATCH, causes=[Cause.CFG])
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.verdict = Verdict.MATCH  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.corrected_request_note = "edited"  # type: ignore[misc]
    assert row.causes == (Cause.CFG,) and isinstance(row.notes, tuple)
    with pytest.raises(AttributeError):
        row.notes.append("edited")  # type: ignore[attr-defined]
    noted = row.noted("a fact")
    assert noted.notes == ("a fact",) and row.notes == () and noted is not row
    write_results(tmp_path, [noted])
    raw = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))[0]
    assert raw["causes"] == ["cfg"] and raw["notes"] == ["a fact"]
    assert read_results(tmp_path) == [noted]


def test_the_corrected_request_index_is_a_record_that_round_trips(tmp_path) -> None:
    from parity.correct import CorrectedIndex, PlacedPrompt

    index = CorrectedIndex(
        step=10,
        placement={0: PlacedPrompt("10/0.json", 0)},
        cannot_reproduce={1: ("cfg 0 cannot be sent", "closest request: 10/1.json prompt 0")},
        closest={1: PlacedPrompt("10/1.json", 0)},
    )
    folder = tmp_path / "corrected_requests"
    folder.mkdir()
    (folder / "10.json").write_text(json.dumps(index.to_json()), encoding="utf-8")
    assert list(index.to_json()) == ["step", "placement", "cannot_reproduce", "closest"]
    assert CorrectedIndex.read_all(tmp_path) == {10: index}
    (folder / "20.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="20.json: not an index of corrected requests"):
        CorrectedIndex.read(tmp_path, 20)
