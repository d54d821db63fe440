#!/usr/bin/env bash
# Sets up everything the two README commands need, on a fresh machine, idempotently:
#   a virtual environment ($VENV, default .venv), torch (pinned: served from local disk), the ComfyUI host (see
#   scripts/comfy_host.py) and its CPU requirements; for `test`, pytest, a headless Chromium, the newest
#   ComfyUI frontend from PyPI (the frontend tests open the workflows in it too) and the random test models.
# One virtual environment serves one host at a time: use another VENV for another COMFYUI_PATH, e.g.
#   VENV=.venv-newest COMFYUI_PATH=/path/to/ComfyUI make test
# Usage: scripts/bootstrap.sh test|demo
set -euo pipefail
mode="${1:-test}"
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"
pip=("$py" -m pip --disable-pip-version-check)

host_root="$("$py" scripts/comfy_host.py path --install)"
echo "[bootstrap] ComfyUI host: $host_root"

reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
{
  "$py" scripts/comfy_host.py requirements
  if [ "$mode" = test ]; then cat scripts/requirements-test.txt; fi
} > "$reqs"
stamp="$VENV/.bootstrap-$mode-$(sha256sum "$reqs" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] installing Python packages ($mode) into $VENV"
  # torch first, on its own, so that nothing else can pull in a different build (the list pins it again)
  mapfile -t torch_pins < <("$py" scripts/comfy_host.py torch)
  "${pip[@]}" install --quiet "${torch_pins[@]}"
  "${pip[@]}" install --quiet -r "$reqs"
  touch "$stamp"
fi

if [ "$mode" = test ]; then
  echo "[bootstrap] newest ComfyUI frontend: $("$py" scripts/comfy_host.py frontend --install)"
  if ! command -v chromium >/dev/null 2>&1; then
    echo "[bootstrap] installing Debian's chromium for the frontend tests"
    sudo_=""
    if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
  fi
  # the random test models, built once into the cache before the tests start (the 5 GB official-layout
  # checkpoint needs about 5.5 GB while it is written: better not on top of a running test session)
  echo "[bootstrap] random test models:"
  "$py" scripts/random_weights.py pano pano_outpaint depth sd2 sd2_inpainting caa caa_outpaint depth_unet caa_depth controlnet lora | sed 's/^/  /'
fi
echo "[bootstrap] ready"
