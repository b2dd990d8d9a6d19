#!/usr/bin/env bash
# Fresh machine -> working `cem`: system libraries (apt), a virtual environment, cem with pinned dependencies.
# The README and .ci/run both call this (directly or through deploy/test.sh), so what a new user runs is what
# CI tests. Idempotent and quick on a second run: apt only for missing packages, pip only when the pins changed.
#   CEM_VENV=/path        put the environment elsewhere (default: .venv in the repo)
#   CEM_SKIP_APT=1        skip apt (no root, or libraries already present)
#   CEM_WITH_BROWSER=1    also install Debian chromium (browser test of `cem label`)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CEM_VENV:-$repo/.venv}
python=${PYTHON:-python3}

# ffcv 1.0.2 compiles against OpenCV and libturbojpeg and loads them at run time; ffmpeg backs video reading.
apt_packages=(pkg-config libopencv-dev libturbojpeg0-dev ffmpeg)
[ "${CEM_WITH_BROWSER:-0}" = 1 ] && apt_packages+=(chromium)

missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ] && [ "${CEM_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}"
  else
    echo "setup.sh: not root or no apt-get; install these first: ${missing[*]}" >&2
    exit 1
  fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.cem-setup-$(cat "$repo/pyproject.toml" "$repo/deploy/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip wheel setuptools
  # torch first and alone: ffcv's sdist build and every later resolve then see the pinned CUDA build.
  "$venv/bin/python" -m pip install -q -c "$repo/deploy/constraints.txt" torch torchvision
  "$venv/bin/python" -m pip install -q -c "$repo/deploy/constraints.txt" -e "$repo[test]"
  rm -f "$venv"/.cem-setup-*
  touch "$stamp"
fi
"$venv/bin/cem" --help >/dev/null
echo "cem is installed in $venv (activate with: source $venv/bin/activate)"
