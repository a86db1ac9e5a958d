"""The command line: generate, validate with injected bad rows, exit codes and one-line errors."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow.parquet as pq
import pytest

from configs import SegmentationError
from pipelines import cli
from pipelines.cli import CommandLineError, main


def _generate(tmp_path, capsys, clients=300):
    out = tmp_path / "data"
    code = main(
        [
            "generate",
            "--clients",
            str(clients),
            "--days",
            "90",
            "--end",
            "2024-03-31",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    return out, summary


def test_generate_then_validate_reports_every_row_valid(tmp_path, capsys):
    out, summary = _generate(tmp_path, capsys)
    assert summary["clients"] == 300 and summary["events"] > 0
    assert (out / "truth.parquet").exists()
    assert main(["validate", "--events", str(out / "events")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == report["valid"] == summary["events"]
    assert report["quarantined"] == 0 and report["duplicates"] == 0


def test_validate_reports_injected_bad_rows_under_their_reasons(tmp_path, capsys):
    out, _ = _generate(tmp_path, capsys)
    events = pq.read_table(out / "events").to_pandas()
    good = events.astype({"amount": "object", "sentiment": "object", "event_time": "object"})
    good["event_time"] = events["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    bad = good.head(6).copy()
    bad["event_id"] = [f"bad{i}" for i in range(6)]
    bad.loc[bad.index[0], "client_id"] = None
    bad.loc[bad.index[1], "event_time"] = "31/02/2024"
    bad.loc[bad.index[2], "amount"] = -5.0
    bad.loc[bad.index[3], "sentiment"] = 3.0
    bad.loc[bad.index[4], "event_time"] = "2999-01-01T00:00:00"
    bad.loc[bad.index[5], "amount"] = "NaN"
    duplicate = good.head(1)
    path = tmp_path / "with_bad.csv"
    pd.concat([good, bad, duplicate]).to_csv(path, index=False)

    code = main(["validate", "--events", str(path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0  # 6 bad rows are well under the 5% threshold
    assert report["by_reason"] == {
        "missing_client_id": 1,
        "unparseable_event_time": 1,
        "negative_amount": 1,
        "sentiment_out_of_range": 1,
        "future_event_time": 1,
        "non_finite_amount": 1,
    }
    assert report["duplicates"] == 1
    assert report["quarantined"] == 6
    assert report["rows"] == len(good) + 7
    assert report["valid"] == len(good)
    # One sample row per reason (default up to 3), with the raw values that were rejected.
    assert set(report["samples"]) == set(report["by_reason"])
    assert report["samples"]["negative_amount"][0]["amount"] == "-5.0"
    assert report["samples"]["unparseable_event_time"][0]["event_time"] == "31/02/2024"
    assert "client_id" not in report["samples"]["missing_client_id"][0]
    main(["validate", "--events", str(path), "--samples", "0"])
    assert "samples" not in json.loads(capsys.readouterr().out)


def test_validate_checks_the_configs_rules_file(tmp_path, capsys):
    out, _ = _generate(tmp_path, capsys)
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: x\n    when: recency_days >>> 3\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"rules:\n  file: {rules}\n")
    code = main(["validate", "--events", str(out / "events"), "--config", str(config)])
    assert code == 1
    assert "rules.yaml" in capsys.readouterr().err


def test_validate_above_threshold_exits_non_zero_with_one_line(tmp_path, capsys):
    config = tmp_path / "strict.yaml"
    config.write_text("events:\n  max_bad_share: 0.0\n")
    path = tmp_path / "e.csv"
    path.write_text("client_id,event_time,event_type,amount\na,2024-01-01,purchase,-1\n")
    code = main(["validate", "--events", str(path), "--config", str(config)])
    captured = capsys.readouterr()
    assert code != 0
    assert json.loads(captured.out)["quarantined"] == 1
    assert captured.err.count("\n") == 1
    assert "above the allowed" in captured.err


def test_missing_column_and_bad_config_fail_with_one_line(tmp_path, capsys):
    path = tmp_path / "e.csv"
    path.write_text("client_id,event_type\na,purchase\n")
    assert main(["validate", "--events", str(path)]) != 0
    assert "missing required column(s) event_time" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("stor: {}\n")
    assert main(["validate", "--events", str(path), "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert "key 'stor': unknown key" in err and err.count("\n") == 1


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("segmentation ")]


def test_command_line_mistakes_are_engine_errors_in_one_line(capsys):
    assert main(["backfill", "--start", "2024-01-02", "--end", "2024-01-01"]) == 1
    err = capsys.readouterr().err
    assert err == "segmentation backfill: error: --end 2024-01-01 is before --start 2024-01-02\n"
    assert main(["models", "promote"]) == 1
    err = capsys.readouterr().err
    assert err == "segmentation models: error: models promote needs a VERSION\n"
    assert issubclass(CommandLineError, SegmentationError)


def test_engine_error_is_one_line_without_hint(monkeypatch, capsys):
    def fail(args):
        raise SegmentationError("the events file\n  has no rows")

    monkeypatch.setattr(cli, "_validate", fail)
    assert main(["validate", "--events", "x.csv"]) == 1
    assert capsys.readouterr().err == "segmentation validate: error: the events file has no rows\n"


def test_unexpected_error_is_one_line_with_the_verbose_hint(monkeypatch, capsys):
    def bug(args):
        return 1 / 0

    monkeypatch.setattr(cli, "_validate", bug)
    assert main(["validate", "--events", "x.csv"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("segmentation validate: error: ZeroDivisionError: division by zero")
    assert "-v" in err and "traceback" in err


def test_verbose_logs_the_traceback(monkeypatch, capsys, caplog):
    def bug(args):
        raise KeyError("segment_id")

    monkeypatch.setattr(cli, "_validate", bug)
    with caplog.at_level(logging.ERROR):
        assert main(["-v", "validate", "--events", "x.csv"]) == 1
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert [r.exc_info[0] for r in failures] == [KeyError]
    assert "bug" in caplog.text  # the traceback names the failing function
    lines = _error_lines(capsys.readouterr().err)
    assert lines == ["segmentation validate: error: KeyError: 'segment_id'"]  # no hint with -v


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_interrupt_exits_130(monkeypatch, capsys, verbose):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_validate", interrupted)
    assert main([*verbose, "validate", "--events", "x.csv"]) == 130
    assert capsys.readouterr().err == "segmentation: interrupted\n"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:s3cr3t-PW@127.0.0.1:1/test",
        "postgresql://postgres:s3cr@t-PW@127.0.0.1:1/test",
        "postgresql://postgres@127.0.0.1:1/test?password=s3cr3t-PW",
    ],
)
def test_the_error_line_masks_url_passwords(monkeypatch, capsys, url):
    def bug(args):
        raise RuntimeError(f"could not connect to {url}")

    monkeypatch.setattr(cli, "_validate", bug)
    assert main(["validate", "--events", "x.csv"]) == 1
    err = capsys.readouterr().err
    assert "s3cr" not in err and "t-PW" not in err and "***" in err


def test_validate_and_features_count_what_stitching_quarantines(tmp_path, capsys):
    # two rows whose client_id is a placeholder and that have no other identifier: a run
    # quarantines them as no_identifier, so validate and features must count them too
    path = tmp_path / "e.csv"
    path.write_text(
        "client_id,anonymous_id,event_time,event_type,amount\n"
        "a,,2024-01-01,purchase,5\n"
        "b,ck1,2024-01-02,purchase,7\n"
        "nan,,2024-01-03,page_view,\n"
        "NULL,,2024-01-04,page_view,\n"
    )
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("events:\n  max_bad_share: 0.6\n")
    assert main(["validate", "--events", str(path), "--config", str(lenient)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] == 2 and report["by_reason"] == {"no_identifier": 2}
    assert report["ignored_identifiers"] == {"client_id:placeholder": 2}

    strict = tmp_path / "strict.yaml"
    strict.write_text(f"workdir: {tmp_path / 'work'}\nevents:\n  max_bad_share: 0.2\n")
    out = tmp_path / "f.parquet"
    args = ["--events", str(path), "--as-of", "2024-01-31", "--out", str(out)]
    assert main(["features", *args, "--config", str(strict)]) != 0
    assert "no_identifier=2" in capsys.readouterr().err
    assert not out.exists()
