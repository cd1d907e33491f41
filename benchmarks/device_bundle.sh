#!/usr/bin/env bash
# Download, into .device-wheels/ (git-ignored), the wheels an offline GPU machine lacks, at the
# versions in uv.lock, for CPython 3.12 manylinux x86_64. benchmarks/gpu_acceptance.sh installs them
# there with `pip install --no-index --no-deps` into a venv that sees the machine's own torch.
#
#   bash benchmarks/device_bundle.sh            # then run benchmarks/gpu_acceptance.sh on the GPU
#
# The machine is assumed to have torch (+ CUDA), numpy, scipy, numba, scikit-learn, matplotlib and
# the usual small libraries; everything else the training and benchmark code imports is bundled: our
# lock's transformers / peft / accelerate / huggingface_hub / tokenizers (so the GPU run tests the
# same versions as CI), tyro, soundfile, librosa, torchaudio, and what they need. The whole working
# tree travels to the machine (64 MiB cap), so the bundle must stay well under 50 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEVICE_WHEELS:-.device-wheels}
PY_VERSION=${DEVICE_PYTHON_VERSION:-3.12}
MAX_MIB=${DEVICE_WHEELS_MAX_MIB:-50}

# Roots: what our code imports that the machine lacks or has at another version than our lock.
ROOTS="transformers peft accelerate huggingface-hub tokenizers safetensors tyro soundfile librosa torchaudio"
# Present on the machine (or too big to carry): never bundled, even when a root depends on them.
PRESENT="torch numpy scipy numba llvmlite scikit-learn joblib threadpoolctl matplotlib contourpy cycler
fonttools kiwisolver pillow pyparsing python-dateutil six tqdm rich markdown-it-py mdurl pygments packaging
pyyaml regex filelock fsspec typing-extensions psutil idna jinja2
markupsafe sympy mpmath networkx setuptools triton"

specs=$(python3 - "$ROOTS" "$PRESENT" <<'PY'
import re, sys, tomllib
roots, present = sys.argv[1].split(), set(sys.argv[2].split())
packages = {p["name"]: p for p in tomllib.load(open("uv.lock", "rb"))["package"]}
seen, todo = set(), list(roots)
while todo:
    name = todo.pop()
    if name in seen or name in present or name.startswith("nvidia-") or name == "musicgen-lora":
        continue
    seen.add(name)
    # Dependencies for other platforms only (Windows, macOS) are skipped.
    todo += [d["name"] for d in packages[name].get("dependencies", [])
             if not re.search(r"sys_platform == '(win32|darwin|emscripten)'|platform_system == '(Windows|Darwin)'", d.get("marker", ""))]
print(" ".join(f"{name}=={packages[name]['version']}" for name in sorted(seen)))
PY
)
echo "bundling: $specs"
rm -rf "$DEST" && mkdir -p "$DEST"
# shellcheck disable=SC2086
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --abi "cp${PY_VERSION/./}" --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform linux_x86_64 --platform any \
    --dest "$DEST" $specs
ls -1 "$DEST" > "$DEST/MANIFEST.txt"
mib=$(du -sm "$DEST" | cut -f1)
echo "$(ls "$DEST"/*.whl | wc -l) wheels, ${mib} MiB in $DEST"
if (( mib > MAX_MIB )); then
    echo "bundle over ${MAX_MIB} MiB: the working tree would not fit the device transfer" >&2
    exit 1
fi
