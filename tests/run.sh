#!/usr/bin/env bash
# Every check CI runs, in the order a failure is cheapest to read: lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; ruff check .
echo "== mypy"; mypy mbmpo_core sim mbmpo_ros
echo "== pytest"; python -m pytest -q "$@"
