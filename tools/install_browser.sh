#!/bin/sh
# Install Debian's Chromium for the docs browser tests, unless it is already there.
# Idempotent and quiet: prints nothing on success; apt's log is shown only when it fails. Needs root (or sudo).
set -eu
BROWSER=/usr/bin/chromium
[ -x "$BROWSER" ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
LOG=$(mktemp); trap 'rm -f "$LOG"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation; } >"$LOG" 2>&1; then
    cat "$LOG" >&2; echo "install_browser.sh: apt-get could not install chromium (log above)" >&2; exit 1
fi
[ -x "$BROWSER" ] || { echo "install_browser.sh: $BROWSER still missing after apt-get install chromium" >&2; exit 1; }
