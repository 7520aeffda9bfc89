#!/usr/bin/env bash
# Install a Debian package when its command is missing: `ensure-tool.sh chromium`
# (the browser tests), `ensure-tool.sh node nodejs` (command, then package when they
# differ). Safe to run again.
set -euo pipefail
tool="$1"
package="${2:-$1}"
if ! command -v "$tool" >/dev/null; then
    echo "installing $package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null
fi
command -v "$tool"
