#!/bin/sh
# Fails unless every page the index links to exists.
set -eu
site=$1
for link in $(grep -o 'href="[^"]*"' "$site/index.html" | cut -d'"' -f2); do
  test -f "$site/$link" || { echo "missing page: $link"; exit 1; }
done
echo "all links resolve"
