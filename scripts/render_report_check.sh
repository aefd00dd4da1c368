#!/usr/bin/env bash
# Render a report (synthetic scores by default, or a given results JSON) and open it in headless
# chromium: writes report.{json,md,html}, figures/*.png and a full-page screenshot to check by eye.
#   scripts/render_report_check.sh [RESULTS_JSON] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${2:-runs/report-check}
if [[ -n "${1:-}" ]]; then
  $PY -m assay.cli report render "$1" --out "$OUT" --formats md,html,png
else
  $PY -m assay.cli report demo "$OUT"
fi
CHROME=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$CHROME" ]]; then
  echo "chromium not found (Debian: apt-get install -y chromium); open $OUT/report.html yourself" >&2
  exit 1
fi
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$PROFILE")
URI="file://$(realpath "$OUT/report.html")"
"$CHROME" "${FLAGS[@]}" --window-size=1280,3000 --screenshot="$OUT/screenshot.png" "$URI" 2>/dev/null
"$CHROME" "${FLAGS[@]}" --dump-dom "$URI" 2>/dev/null > "$OUT/dom.html"
echo "tables: $(grep -o '<table' "$OUT/dom.html" | wc -l), images: $(grep -o '<img ' "$OUT/dom.html" | wc -l)"
echo "screenshot: $OUT/screenshot.png"
