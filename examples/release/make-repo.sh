#!/bin/sh
# make-repo.sh DIR: turn project/ into a git repository at DIR (commits on `main`, a tag
# `v1.0.0`, and a branch `broken` whose tests fail), so the release pipeline has real git
# history to build from.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-repo}"
rm -rf "$dir" && mkdir -p "$dir" && cp -r "$here/project/." "$dir/"
cd "$dir"
g() { git -c user.name=Sluice -c user.email=sluice@example.com -c init.defaultBranch=main "$@"; }
g init -q
g add . && g commit -q -m "Greeter 1.0"
g tag v1.0.0
g checkout -q -b broken
sed -i 's/Hello, /Howdy, /' src/greet.sh
g commit -q -am "Change the greeting (breaks the tests)"
g checkout -q main
echo "git repository ready in $dir (branches: main, broken; tag: v1.0.0)"
