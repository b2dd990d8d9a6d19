#!/usr/bin/env bash
# The README's test command (CI runs exactly this): install or refresh the environment, start the
# single-node SLURM when we are root, check the architecture (import-linter contracts in pyproject.toml)
# and lint (ruff), then run pytest with any extra arguments passed through.
#   REQUIRE_SLURM=1 REQUIRE_SHARED_DATA=1 REQUIRE_BROWSER=1 turn skips for a missing resource into failures.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CEM_VENV:-$repo/.venv}
bash "$repo/deploy/setup.sh" || exit 1
if [ "$(id -u)" = 0 ]; then
  bash "$repo/deploy/slurm/start-local-slurm.sh" || echo "test.sh: SLURM did not start; SLURM tests will skip (or fail under REQUIRE_SLURM=1)" >&2
fi
cd "$repo"
"$venv/bin/lint-imports" --no-cache || { echo "test.sh: an import-linter contract is broken (see above)" >&2; exit 1; }
"$venv/bin/ruff" check --no-cache cem_pipeline training tests || { echo "test.sh: ruff found problems (see above)" >&2; exit 1; }
"$venv/bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
