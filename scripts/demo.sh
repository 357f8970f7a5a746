#!/usr/bin/env bash
# The main job: sets up .venv, builds the Earth-patches set, trains configs/earth_demo.py, evaluates, predicts,
# and writes maps and the results table under ${DEMO_WORKDIR:-runs/earth_demo}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh data
exec .venv/bin/python -m translocator_jax.commands.demo --workdir "${DEMO_WORKDIR:-runs/earth_demo}" "$@"
