#!/usr/bin/env bash
# Rebuild pipeline/plots/template.html: DVC's plot page with vega, vega-lite and vega-embed inlined, so
# `dvc plots show` renders with no network (DVC's own page loads them from a CDN and shows blank offline).
# The versions are the ones dvc-render's page names. Needs npm (the npm registry); the result is committed.
# vega, vega-lite and vega-embed are BSD-3-Clause licensed (c) University of Washington Interactive Data Lab.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}"; tar xzf "$f" -C "${f%.tgz}" --strip-components 1; done
{
  printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>DIRL pipeline plots</title>\n'
  printf '<!-- vega 5.20.2, vega-lite 5.2.0, vega-embed 6.18.2 (BSD-3-Clause), inlined for offline use -->\n'
  for js in vega-5.20.2/build/vega.min.js vega-lite-5.2.0/build/vega-lite.min.js vega-embed-6.18.2/build/vega-embed.min.js; do
    printf '<script>\n'; cat "$js"; printf '\n</script>\n'
  done
  printf '<style>table { border-spacing: 15px; } body { font-family: sans-serif; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} > "$here/template.html.tmp"
mv "$here/template.html.tmp" "$here/template.html"
echo "wrote $here/template.html ($(wc -c < "$here/template.html") bytes)"
