"""The command line: generate, validate with injected bad rows, exit codes and one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq

from pipelines.cli import main


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
