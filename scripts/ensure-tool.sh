#!/usr/bin/env bash
# Install a Debian package when its command is missing: `ensure-tool.sh chromium`
# (the browser tests), `ensure-tool.sh wrk` (the benchmark). Safe to run again.
set -euo pipefail
tool="$1"
if ! command -v "$tool" >/dev/null; then
    echo "installing $tool"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
fi
command -v "$tool"
