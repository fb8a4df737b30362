#!/usr/bin/env bash
# Render a report.html in headless Chromium to a PNG screenshot, to look at the page as a
# reader would (offline: the page must need nothing from the network).
#
#   scripts/render_report.sh runs/halo-lenet5/report/report.html [out.png] [height]
set -euo pipefail
html=${1:?usage: render_report.sh REPORT_HTML [OUT_PNG] [HEIGHT]}
out=${2:-${html%.html}.screenshot.png}
height=${3:-4000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "render_report.sh: no chromium found (apt-get install chromium)" >&2
    exit 2
fi
url="file://$(realpath "$html")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$profile" --no-first-run --disable-extensions \
    --screenshot="$(realpath -m "$out")" --window-size=1280,"$height" "$url" 2>/dev/null
echo "$out"
