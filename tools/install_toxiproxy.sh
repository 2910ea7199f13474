#!/bin/sh
# Install Shopify's Toxiproxy server (the TCP fault proxy of tests/test_network_faults.py), unless it is already there.
# Built from source with `go install`, since GitHub's release downloads are out of reach here; the Go module proxy serves it.
# It goes into the project's cache folder (next to the Kafka jars), where tests/toxiproxy.py looks for it.
# Idempotent and quiet: prints nothing on success; Go's log is shown only when it fails.
set -eu
VERSION=2.12.0
DIR="${SALES_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/sales-prediction-kafka}/toxiproxy-$VERSION"
BIN="$DIR/toxiproxy-server"
[ -x "$BIN" ] && exit 0
if ! command -v go >/dev/null 2>&1; then
    echo "install_toxiproxy.sh: 'go' not found. The network-fault tests (pytest -m faults) need Toxiproxy $VERSION, built with" >&2
    echo "  go install github.com/Shopify/toxiproxy/v2/cmd/server@v$VERSION" >&2
    echo "Install Go (https://go.dev/dl, or apt-get install golang-go) and run make test again, or put a toxiproxy-server binary at $BIN" >&2
    exit 1
fi
mkdir -p "$DIR"
LOG=$(mktemp); TMP=$(mktemp -d "$DIR/build.XXXXXX"); trap 'rm -rf "$LOG" "$TMP"' EXIT
if ! GOBIN="$TMP" go install "github.com/Shopify/toxiproxy/v2/cmd/server@v$VERSION" >"$LOG" 2>&1; then
    cat "$LOG" >&2; echo "install_toxiproxy.sh: go install of Toxiproxy $VERSION failed (log above)" >&2; exit 1
fi
mv "$TMP/server" "$BIN"  # renamed into place: an interrupted build never looks installed
"$BIN" -version >/dev/null 2>&1 || { echo "install_toxiproxy.sh: $BIN does not run" >&2; exit 1; }
