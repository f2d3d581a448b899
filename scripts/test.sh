#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite (real-model tests included).
# pytest's exit code 5 ("no tests collected") is treated as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --server --browser
set +e
python -m pytest -q --timeout=900 -m "slow or not slow" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
