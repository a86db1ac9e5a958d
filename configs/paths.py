"""Where the shipped YAML files live (default.yaml, taxonomy.yaml, rules.yaml)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
