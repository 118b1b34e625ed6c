#!/usr/bin/env bash
# Check the shipped Prometheus/Alertmanager examples with Debian's promtool
# and amtool (installed by .ci/install-test-deps):
#   - packaging/examples/prometheus/rules and tests are what
#     `vantage slo generate` writes today for the shipped journeys;
#   - the rules load, and pass the generated `promtool test rules` cases;
#   - the tests sit outside the rules glob;
#   - the Alertmanager example routes by team and passes amtool.
# Ends with "N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ex="$repo/packaging/examples"
dir="$ex/prometheus"
bin="${VANTAGE_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/vantage}"

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

for tool in promtool amtool; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        fail "$tool available" "$tool on PATH (run .ci/install-test-deps)" "not found"
        finish
    fi
done
pass "promtool available ($(promtool --version 2>&1 | head -n 1))"
if [ ! -x "$bin" ]; then
    fail "vantage binary" "$bin (cargo build --locked, or set VANTAGE_BIN)" "missing"
    finish
fi

# The shipped files are exactly what the generator writes now.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if out="$("$bin" slo generate --config "$dir/agent-slo.yaml" --out "$tmp/prometheus" 2>&1)"; then pass "vantage slo generate"
else fail "vantage slo generate" "exit 0" "$out"; fi
for f in rules/vantage-slo.yaml tests/vantage-slo.test.yaml; do
    if d="$(diff -u "$dir/$f" "$tmp/prometheus/$f" 2>&1)"; then pass "$f is up to date"
    else fail "$f is up to date" "regenerate: vantage slo generate --config $dir/agent-slo.yaml --out $dir" "$(printf '%s\n' "$d" | head -n 40)"; fi
done
for fmt in sloth openslo; do
    "$bin" slo generate --config "$dir/agent-slo.yaml" --format "$fmt" --out "$tmp/specs" >/dev/null 2>&1
    f="vantage-slo.$fmt.yaml"
    if d="$(diff -u "$ex/slo-specs/$f" "$tmp/specs/$f" 2>&1)"; then pass "slo-specs/$f is up to date"
    else fail "slo-specs/$f is up to date" "regenerate with --format $fmt --out $ex/slo-specs" "$(printf '%s\n' "$d" | head -n 40)"; fi
done

if out="$(cd "$dir" && promtool check rules rules/*.yaml 2>&1)" && ! grep -q "duplicate" <<<"$out"; then pass "promtool check rules rules/*.yaml"
else fail "promtool check rules rules/*.yaml" "SUCCESS without lint findings" "$out"; fi
if out="$(cd "$dir" && promtool test rules tests/*.yaml 2>&1)"; then pass "promtool test rules tests/*.yaml"
else fail "promtool test rules tests/*.yaml" "SUCCESS" "$out"; fi

# A rules/*.yaml glob must not load test files, and no test file sits next to rules.
if ! grep -l "rule_files:" "$dir"/rules/*.yaml >/dev/null 2>&1 && [ -z "$(ls "$dir"/*.yaml 2>/dev/null | grep -v agent-slo.yaml)" ]; then
    pass "rule tests are apart from rule files"
else fail "rule tests are apart from rule files" "only rules in rules/, tests in tests/" "$(ls -R "$dir")"; fi

# The test cases keep covering what they claim.
t="$dir/tests/vantage-slo.test.yaml"
for want in "alertname: JourneyAvailabilityBudgetBurn" "alertname: JourneyNoResults" "alertname: JourneyLocationNoResults" "is a ticket, not a page" "severity: page" "exp_alerts: []"; do
    if grep -qF "$want" "$t"; then pass "tests cover '$want'"
    else fail "tests cover '$want'" "$want" "not in $t"; fi
done
# The workbook's windows and factors are the production profile.
r="$dir/rules/vantage-slo.yaml"
for want in 'ratio_rate1h{slo="availability"} > on (journey_name, slo) group_left (team) (14.4 \*' 'ratio_rate6h{slo="availability"} > on (journey_name, slo) group_left (team) (6 \*' 'ratio_rate1d{slo="availability"} > on (journey_name, slo) group_left (team) (3 \*' 'ratio_rate3d{slo="availability"} > on (journey_name, slo) group_left (team) (1 \*' 'slo:min_locations' 'record: slo:error_budget_remaining:ratio' 'record: slo:burn_rate:ratio'; do
    if grep -q "$want" "$r"; then pass "rules use $want"
    else fail "rules use $want" "$want" "missing in $r"; fi
done

# Prometheus loads the example config with the rules.
sed "s|/etc/prometheus/vantage/rules|$dir/rules|" "$dir/prometheus.yml" >"$tmp/prometheus.yml"
if out="$(promtool check config "$tmp/prometheus.yml" 2>&1)"; then pass "promtool check config prometheus.yml"
else fail "promtool check config prometheus.yml" "SUCCESS" "$out"; fi

# Alertmanager: valid, and routes by team and severity.
am="$ex/alertmanager.yml"
if out="$(amtool check-config "$am" 2>&1)"; then pass "amtool check-config alertmanager.yml"
else fail "amtool check-config alertmanager.yml" "SUCCESS" "$out"; fi
route() { amtool config routes test --config.file="$am" "$@" 2>/dev/null; }
for case in "marketing-pager team=marketing severity=page" "marketing-tickets team=marketing severity=ticket" "incidents-pager team=incidents severity=page" "sre-pager team=platform severity=page" "sre-tickets team=sre severity=ticket alertname=LocationNoResults"; do
    set -- $case
    want="$1"; shift
    got="$(route "$@")"
    if [ "$got" = "$want" ]; then pass "routes $* to $want"
    else fail "routes $* to $want" "$want" "$got"; fi
done
for want in "mute_time_intervals: \[crm-maintenance\]" "target_matchers: \['severity=\"ticket\"'\]" "amtool silence add"; do
    if grep -q "$want" "$am"; then pass "alertmanager.yml has $want"
    else fail "alertmanager.yml has $want" "$want" "missing"; fi
done

# The Collector example does not turn resource attributes (service.version) into labels,
# and no example promises what Vantage does not do.
c="$ex/otel-collector.yaml"
if [ "$(grep -c 'enabled: false' "$c")" -ge 2 ] && ! grep -q 'enabled: true' <(grep -A1 resource_to_telemetry_conversion "$c"); then
    pass "collector keeps resource attributes out of labels"
else fail "collector keeps resource attributes out of labels" "resource_to_telemetry_conversion disabled" "$(grep -A1 resource_to_telemetry_conversion "$c")"; fi
if out="$(grep -rniE 'exemplar|\bHAR\b' "$ex" "$repo/packaging/agent.yaml" 2>&1)"; then
    fail "no promises of exemplars or HAR files" "no match" "$out"
else pass "no promises of exemplars or HAR files"; fi

finish
