#!/usr/bin/env bash
# Take a full-width screenshot of a report page in headless Chromium, as a person would see it.
#
# Usage: scripts/screenshot_report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]
#   WIDTH x HEIGHT is the browser window (default 1400 x 4000); the screenshot is the window.
#
# Needs Debian's chromium (apt-get install -y chromium). No network is used: the page is
# self-contained, and the flags below turn off Chromium's own background traffic.
#
# The screenshot in docs/report.png is made from the synthetic sample report:
#   python -m pipelines.report --sample /tmp/sample-report.html
#   scripts/screenshot_report.sh /tmp/sample-report.html docs/report.png
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2
    exit 2
fi
report=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1400}
height=${4:-4000}
[[ -f "$report" ]] || { echo "$0: no such report: $1" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n "$browser" ]] || { echo "$0: chromium not found (apt-get install -y chromium)" >&2; exit 1; }

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"

# --virtual-time-budget lets the page's scripts (plotly drawing the charts) finish first.
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --virtual-time-budget=10000 \
    --user-data-dir="$profile" --window-size="${width},${height}" \
    --screenshot="$out" "file://${report}" >/dev/null 2>&1

[[ -s "$out" ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
