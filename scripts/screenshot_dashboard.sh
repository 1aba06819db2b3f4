#!/usr/bin/env bash
# Screenshot a saekit dashboard with headless Chromium (Debian: apt-get install -y chromium).
#
#   scripts/screenshot_dashboard.sh DASHBOARD_DIR [FEATURE]
#
# writes DASHBOARD_DIR/index.png and DASHBOARD_DIR/feature_<FEATURE>.png (default: the first
# feature listed in features.json). No network: every page is a local file.
set -euo pipefail
dir=$(cd "${1:?usage: $0 DASHBOARD_DIR [FEATURE]}" && pwd)
feature=${2:-$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["feature"])' "$dir/features.json")}
chrome=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
shot() {  # page png height
  "$chrome" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --window-size="1280,$3" \
    --screenshot="$2" "file://$dir/$1" 2>/dev/null
  echo "wrote $2"
}
shot index.html "$dir/index.png" 900
shot "feature_$feature.html" "$dir/feature_$feature.png" 1600
