#!/bin/sh
# A tiny static-site build: one HTML page per pages/*.txt, plus an index.
set -eu
src=$1 out=$2 title=$3 digest=$4
mkdir -p "$out"
version="1.0.$(date +%s)"
{
  echo "<!doctype html><title>$title</title><h1>$title</h1><ul>"
  for page in "$src"/pages/*.txt; do
    name=$(basename "$page" .txt)
    sed -e 's/&/\&amp;/g; s/</\&lt;/g' "$page" | awk -v t="$name" 'BEGIN{print "<!doctype html><title>" t "</title><pre>"} {print} END{print "</pre>"}' > "$out/$name.html"
    echo "<li><a href=\"$name.html\">$name</a></li>"
  done
  echo "</ul><footer>version $version, built from $digest</footer>"
} > "$out/index.html"
cp "$src/healthcheck.sh" "$out/healthcheck.sh"
chmod +x "$out/healthcheck.sh"
echo "built $(ls "$out"/*.html | wc -l) pages"
echo "Version=$version" >> "$SLUICE_OUTPUT"
