#!/usr/bin/env bash
# Install Debian's chromium for the HTML report's browser test when it is missing.
# Never fails the test run: without a browser the test skips and says why.
set -u
for b in chromium chromium-browser google-chrome; do
  command -v "$b" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: no apt-get here; the headless-browser test will skip (install chromium to run it)"; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install_browser: not root and no passwordless sudo; the headless-browser test will skip"; exit 0
  fi
fi
echo "install_browser: installing chromium (apt-get) for the HTML report test"
$SUDO apt-get update -qq >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
  || echo "install_browser: apt-get install chromium failed; the headless-browser test will skip"
exit 0
