#!/usr/bin/env bash
# Check and unit-test the example Prometheus rules in
# packaging/examples/prometheus/ with promtool (Debian package `prometheus`,
# installed with apt-get when promtool is missing and running as root).
# Ends with "N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="$repo/packaging/examples/prometheus"

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() {
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$1"
    printf '     expected: %s\n' "$2"
    printf '     found:\n'
    printf '%s\n' "$3" | sed 's/^/       /'
}
finish() {
    printf '%d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" -eq 0 ]
    exit $?
}

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "promtool missing: apt-get install -y prometheus" >&2
        { apt-get install -y prometheus || { apt-get update && apt-get install -y prometheus; }; } >/dev/null 2>&1
        # The package starts a Prometheus server where systemd runs; the
        # test only needs promtool.
    fi
fi
if ! command -v promtool >/dev/null 2>&1; then
    fail "promtool available" "promtool on PATH (apt-get install prometheus)" "not found"
    finish
fi
pass "promtool available ($(promtool --version 2>&1 | head -n 1))"

for f in vantage-rules.yaml vantage-slo-rules.yaml; do
    if out="$(promtool check rules "$dir/$f" 2>&1)"; then pass "promtool check rules $f"
    else fail "promtool check rules $f" "SUCCESS" "$out"; fi
done

# The unit tests: multi-location alert fires for 2 of 3 failing locations
# (after 5m, not before) and not for 1 of 3; the fast-burn SLO page fires
# on a total outage.
if out="$(cd "$dir" && promtool test rules vantage-rules.test.yaml 2>&1)"; then
    pass "promtool test rules vantage-rules.test.yaml"
else
    fail "promtool test rules vantage-rules.test.yaml" "SUCCESS" "$out"
fi

# The test file must keep covering what it claims to.
t="$dir/vantage-rules.test.yaml"
for want in "alertname: JourneyFailingInMultipleLocations" "alertname: JourneyErrorBudgetBurnFast"; do
    if grep -q "$want" "$t"; then pass "test file covers '${want#alertname: }'"
    else fail "test file covers '${want#alertname: }'" "$want" "not in $t"; fi
done

# Sanity of the SLO thresholds (99.5% => budget 0.005).
for want in '14.4 \* 0.005' '6 \* 0.005' '3 \* 0.005' '1 \* 0.005' 'ratio_rate1h' 'ratio_rate5m' 'ratio_rate6h' 'ratio_rate30m' 'ratio_rate1d' 'ratio_rate2h' 'ratio_rate3d'; do
    if grep -q "$want" "$dir/vantage-slo-rules.yaml"; then pass "SLO rules use $want"
    else fail "SLO rules use $want" "$want" "missing in vantage-slo-rules.yaml"; fi
done

finish
