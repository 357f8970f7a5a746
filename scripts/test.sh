#!/usr/bin/env bash
# The test suite: sets up .venv (with the dev extra) and runs pytest. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh dev
exec .venv/bin/python -m pytest -q tests "$@"
