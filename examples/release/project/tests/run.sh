#!/bin/sh
# tests/run.sh DIST REPORT: run the greeter's tests, write a JUnit XML report to REPORT.
dist="$1"; report="$2"
mkdir -p "$(dirname "$report")"
cases=""; failures=0; total=0
check() { # check NAME EXPECTED ARGS...
  name="$1"; expected="$2"; shift 2
  total=$((total + 1))
  actual="$("$dist/bin/greet" "$@")"
  if [ "$actual" = "$expected" ]; then
    cases="$cases<testcase classname=\"greet\" name=\"$name\"/>"
  else
    failures=$((failures + 1))
    cases="$cases<testcase classname=\"greet\" name=\"$name\"><failure message=\"got $actual\"/></testcase>"
  fi
}
check default "Hello, world!"
check named "Hello, Ana!" Ana
printf '<?xml version="1.0"?>\n<testsuite name="greet" tests="%s" failures="%s">%s</testsuite>\n' "$total" "$failures" "$cases" > "$report"
echo "$total tests, $failures failures"
