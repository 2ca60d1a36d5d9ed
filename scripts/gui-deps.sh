#!/usr/bin/env bash
# Install the virtual display and GL/XCB libraries napari's Qt canvas needs, and dicom3tools'
# dciodvfy (the DICOM validator the SEG tests run), where they are missing (Debian/Ubuntu; needs
# root or sudo). Elsewhere it only says what it could not do.
set -euo pipefail
pkgs=(xvfb libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
      libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
      libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3 libfontconfig1 dicom3tools)
[ "$(uname -s)" = Linux ] || exit 0
command -v dpkg >/dev/null 2>&1 || { echo "gui-deps: not a Debian-like system; install Xvfb and GL libraries yourself" >&2; exit 0; }
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "gui-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
