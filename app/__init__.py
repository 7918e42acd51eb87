"""A Tangled spindle: runs GitHub Actions workflows for repos on Tangled knots."""

from pathlib import Path

# The project root holds lexicons/ and migrations/ (the package is installed editable,
# also in the Docker image), so the CLI works from any directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
LEXICON_DIR = PROJECT_ROOT / "lexicons"
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
