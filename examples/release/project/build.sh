#!/bin/sh
# build.sh SRC DEST VERSION: package the greeter into DEST.
set -e
src="$1"; dest="$2"; version="$3"
mkdir -p "$dest/bin"
cp "$src/src/greet.sh" "$dest/bin/greet"
chmod +x "$dest/bin/greet"
echo "$version" > "$dest/VERSION"
echo "Version=$version" >> "$SLUICE_OUTPUT"
