"""Tests of the feature catalog: one place for names, families, types and descriptions."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from configs import FeaturesConfig
from features.catalog import FAMILIES, FEATURES, feature_catalog, feature_schema, render_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "features.md"


def test_committed_docs_match_the_catalog() -> None:
    assert DOCS.read_text() == render_markdown(), (
        "docs/features.md is stale: run `python -m features.catalog > docs/features.md`"
    )


def test_every_feature_is_named_once_with_a_family_and_one_line() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    assert FEATURES[0].name == "client_id"
    for feature in FEATURES:
        assert feature.family in FAMILIES, feature.name
        assert feature.description and "\n" not in feature.description, feature.name
        assert feature.name in render_markdown()


def test_catalog_follows_the_configured_windows() -> None:
    cfg = FeaturesConfig(windows_days=(3, 60))
    names = {f.name for f in feature_catalog(cfg)}
    assert {"events_3d", "events_60d", "events_30d", "events_90d"} <= names
    assert "events_7d" not in names
    schema = feature_schema(cfg)
    assert schema.field("events_3d").type == pa.int64()
    assert schema.field("spend_3d").type == pa.float64()
