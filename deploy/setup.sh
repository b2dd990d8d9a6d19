#!/usr/bin/env bash
# Fresh machine -> working `cem`: system libraries (apt), a virtual environment, cem with pinned dependencies.
# The README and .ci/run both call this, so what a new user runs is what CI tests.
#   deploy/setup.sh            system libs + .venv + cem[test]
#   CEM_VENV=/path deploy/setup.sh   put the environment elsewhere
#   CEM_SKIP_APT=1             skip apt (no root, or libraries already present)
#   CEM_WITH_BROWSER=1         also install Debian chromium (browser tests of `cem label`)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${CEM_VENV:-$repo/.venv}
python=${PYTHON:-python3}

apt_packages=(pkg-config libopencv-dev libturbojpeg0-dev ffmpeg)
[ "${CEM_WITH_BROWSER:-0}" = 1 ] && apt_packages+=(chromium)

if [ "${CEM_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${apt_packages[@]}"
  else
    echo "setup.sh: not root or no apt-get; make sure these are installed: ${apt_packages[*]}" >&2
  fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip wheel setuptools
# torch first and alone: ffcv's sdist build and every later resolve then see the pinned CUDA build.
"$venv/bin/python" -m pip install -q -c "$repo/deploy/constraints.txt" torch torchvision
"$venv/bin/python" -m pip install -q -c "$repo/deploy/constraints.txt" -e "$repo[test]"
"$venv/bin/cem" --help >/dev/null
echo "cem installed in $venv (activate with: source $venv/bin/activate)"
