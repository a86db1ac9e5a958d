"""-v/-q after the command, progress lines with elapsed seconds, library chatter only with
-v -v, `serve`'s next run, and `models list` read straight from a SQLite registry."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from pipelines import cli
from pipelines.cli import _parser, main
from pipelines.nightly import _Clock
from pipelines.schedule import ScheduleError, next_run, next_run_text


@pytest.mark.parametrize(
    ("argv", "verbosity", "quiet"),
    [
        (["run"], 0, False),
        (["run", "-v"], 1, False),
        (["-v", "run", "-v"], 2, False),
        (["run", "--verbose", "-v"], 2, False),
        (["run", "-q"], 0, True),
        (["-q", "status"], 0, True),
    ],
)
def test_verbose_and_quiet_after_the_command(monkeypatch, argv, verbosity, quiet):
    seen = {}

    def fake(args):
        seen.update(verbose=args.verbose, quiet=args.quiet)
        return 0

    monkeypatch.setattr(cli, "_run", fake)
    monkeypatch.setattr(cli, "_status", fake)
    assert main(argv) == 0
    assert seen == {"verbose": verbosity, "quiet": quiet}
    chatty = logging.getLogger("httpx").getEffectiveLevel()
    assert (chatty <= logging.INFO) == (verbosity >= 2)


def test_progress_lines_go_to_stderr_with_elapsed_seconds_unless_quiet(monkeypatch, capsys):
    def fake(args):
        _Clock(date(2025, 5, 1), logging.getLogger("pipelines.nightly").info).say("publishing")
        return 0

    monkeypatch.setattr(cli, "_run", fake)
    assert main(["run"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.endswith("s [2025-05-01] publishing") and float(line.split("s ")[0]) >= 0
    assert main(["run", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_the_parser_knows_the_operation_commands():
    args = _parser().parse_args(
        ["export", "--segment", "C1", "--entries-since", "2025-01-01", "--exits", "--out", "x.csv"]
    )
    assert (args.segment, args.entries_since, args.exits) == ("C1", date(2025, 1, 1), True)
    assert _parser().parse_args(["status"]).max_age == 26.0


def test_export_without_a_format_or_known_ending_is_one_line(capsys):
    assert main(["export", "--segment", "s1", "--out", "x.txt"]) == 1
    assert "give --format csv or parquet" in capsys.readouterr().err


def test_serve_names_the_next_run():
    after = datetime(2026, 1, 10, 1, 30, tzinfo=UTC)
    assert next_run("0 2 * * *", "UTC", after=after) == datetime(2026, 1, 10, 2, 0, tzinfo=UTC)
    when = next_run("0 2 * * *", "Europe/Paris", after=after)
    assert when.isoformat() == "2026-01-11T02:00:00+01:00"
    text = next_run_text("0 2 * * *", "UTC", after=after)
    assert text.startswith("Next run: 2026-01-10 02:00 UTC (in 30 min;")
    with pytest.raises(ScheduleError, match="schedule.cron"):
        next_run("not a cron", "UTC")


def test_models_list_reads_the_sqlite_registry_as_mlflow_does(tmp_path, capsys, monkeypatch):
    """The fast SQLite reader gives exactly MLflow's listing (a real registry, two versions,
    tags, metrics and the champion alias)."""
    from pipelines.registry import ModelRegistry, RegistryError, list_versions_fast
    from pipelines.tracking import default_artifact_location, make_client

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry(uri)
    client = make_client(uri)
    experiment = client.create_experiment("e", artifact_location=default_artifact_location(uri))
    run = client.create_run(experiment).info.run_id  # artifacts beside the database, not in ./
    registry.register("m", _Identity(), run, metrics={"quality": 0.5}, tags={"as_of": "x"})
    registry.register("m", _Identity(), run, metrics={"quality": 0.7})
    registry.promote("m", 2)
    fast = list_versions_fast(uri, "m")
    pd.testing.assert_frame_equal(fast, registry.list_versions("m"))
    assert list(fast["aliases"]) == ["", "champion"]
    with pytest.raises(RegistryError, match="'nope' not found"):
        list_versions_fast(uri, "nope")
    config = tmp_path / "c.yaml"
    config.write_text(f"workdir: {tmp_path}\nmlflow:\n  cluster_model_name: m\n")
    assert main(["models", "list", "--config", str(config)]) == 0
    assert "champion" in capsys.readouterr().out


class _Identity:
    def predict(self, X):
        return X
