#!/usr/bin/env bash
# Build the vantage .deb with packaging/build-deb and inspect it:
# contents, control fields, conffiles, maintainer scripts, lintian, the
# systemd unit (verify + offline security score <= 2.0) and the layout
# extracted into a scratch root.
#
#   tests/packaging/test-deb.sh              # build, then test
#   VANTAGE_DEB=path.deb tests/packaging/test-deb.sh   # test an existing .deb
#
# Needs: dpkg-deb, systemd-analyze (package systemd), lintian (installed with
# apt-get when missing and running as root). Ends with "N passed, M failed";
# exits non-zero if anything failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
max_exposure="2.0"

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() {
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$1"
    printf '     expected: %s\n' "$2"
    printf '     found:    %s\n' "$3"
}
# check NAME EXPECTED FOUND: pass when equal.
check_eq() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "$2" "$3"; fi; }
finish() {
    printf '%d passed, %d failed\n' "$passed" "$failed"
    [ "$failed" -eq 0 ]
    exit $?
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

need_pkg() { # need_pkg COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $2 (for $1)" >&2
        (apt-get install -y "$2" || { apt-get update && apt-get install -y "$2"; }) >"$tmp/apt.log" 2>&1
    fi
    command -v "$1" >/dev/null 2>&1
}

# --- build --------------------------------------------------------------------
if [ -n "${VANTAGE_DEB:-}" ]; then
    deb="$VANTAGE_DEB"
else
    if deb="$(packaging/build-deb)"; then :; else deb=""; fi
    deb="$(printf '%s\n' "$deb" | tail -n 1)"
fi
if [ -n "$deb" ] && [ -f "$deb" ]; then
    pass "packaging/build-deb produced $deb"
else
    fail "packaging/build-deb produced a .deb" "path of an existing .deb on the last stdout line" "'$deb'"
    finish
fi

cargo_version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
arch="$(dpkg --print-architecture)"

# --- contents -----------------------------------------------------------------
dpkg-deb -c "$deb" >"$tmp/contents" 2>&1 || fail "dpkg-deb -c" "exit 0" "$(head -3 "$tmp/contents")"
# "perm owner/group size date time ./path" -> "perm path" (directories keep /)
awk '{ p = $6; sub(/^\.\//, "/", p); print $1, p }' "$tmp/contents" >"$tmp/paths"

expect_file() { # expect_file PATH MODE
    local line
    line="$(awk -v p="$1" '$2 == p' "$tmp/paths")"
    if [ -z "$line" ]; then
        fail "contains $1" "$1 ($2)" "missing from dpkg-deb -c"
    elif [ "${line%% *}" != "$2" ]; then
        fail "mode of $1" "$2" "${line%% *}"
    else
        pass "contains $1 ($2)"
    fi
}
expect_file /usr/bin/vantage -rwxr-xr-x
expect_file /usr/libexec/vantage/vantage-agent -rwxr-xr-x
expect_file /lib/systemd/system/vantage.service -rw-r--r--
expect_file /etc/vantage/agent.yaml -rw-r--r--
expect_file /etc/vantage/probes.d/README -rw-r--r--
expect_file /usr/share/man/man1/vantage.1.gz -rw-r--r--
expect_file /usr/share/man/man1/vantage-run.1.gz -rw-r--r--
expect_file /usr/share/man/man1/vantage-check.1.gz -rw-r--r--
expect_file /usr/share/bash-completion/completions/vantage -rw-r--r--
expect_file /usr/share/zsh/vendor-completions/_vantage -rw-r--r--
expect_file /usr/share/fish/vendor_completions.d/vantage.fish -rw-r--r--
expect_file /usr/share/doc/vantage/copyright -rw-r--r--
expect_file /usr/share/doc/vantage/changelog.Debian.gz -rw-r--r--
expect_file /usr/share/doc/vantage/README.Debian -rw-r--r--
expect_file /usr/share/doc/vantage/examples/otel-collector.yaml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/alertmanager.yml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/prometheus/prometheus.yml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/prometheus/agent-slo.yaml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/prometheus/rules/vantage-slo.yaml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/prometheus/tests/vantage-slo.test.yaml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/slo-specs/vantage-slo.sloth.yaml -rw-r--r--
expect_file /usr/share/doc/vantage/examples/slo-specs/vantage-slo.openslo.yaml -rw-r--r--
expect_file /usr/share/lintian/overrides/vantage -rw-r--r--
expect_file /usr/share/vantage/schema/probes.schema.json -rw-r--r--
expect_file /usr/share/vantage/schema/agent.schema.json -rw-r--r--
if [ -f README.md ]; then
    expect_file /usr/share/doc/vantage/README.md -rw-r--r--
fi
nonroot="$(awk '{print $2}' "$tmp/contents" | grep -Ev '^(root/root|0/0)$' | sort -u | tr '\n' ' ')"
check_eq "all files owned by uid/gid 0 (root/root)" "" "$nonroot"

# --- control fields -----------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1" 2>/dev/null; }
check_eq "Package field" "vantage" "$(field Package)"
check_eq "Version field" "$cargo_version-1" "$(field Version)"
check_eq "Architecture field" "$arch" "$(field Architecture)"
check_eq "Section field" "net" "$(field Section)"
check_eq "Priority field" "optional" "$(field Priority)"
check_eq "Recommends field" "chromium, chromium-driver" "$(field Recommends)"
if field Maintainer | grep -Eq '^[^<]+ <[^@ ]+@[^> ]+>$'; then pass "Maintainer field is 'Name <email>'"
else fail "Maintainer field" "Name <email>" "$(field Maintainer)"; fi
if field Depends | grep -q 'libc6'; then pass "Depends (\$auto) includes libc6"
else fail "Depends (\$auto) includes libc6" "libc6 (>= ...)" "$(field Depends)"; fi
# Packed relocations (build.rs) need glibc 2.36's loader.
if field Depends | grep -q 'libc6 (>= 2.36)'; then pass "Depends includes libc6 (>= 2.36) for DT_RELR"
else fail "Depends includes libc6 (>= 2.36)" "libc6 (>= 2.36)" "$(field Depends)"; fi
desc_lines="$(field Description | wc -l)"
if [ "$desc_lines" -ge 3 ]; then pass "Description has an extended description ($desc_lines lines)"
else fail "Description has an extended description" ">= 3 lines" "$desc_lines line(s)"; fi

# --- control archive: conffiles and maintainer scripts ------------------------
mkdir -p "$tmp/control"
dpkg-deb -e "$deb" "$tmp/control"
conffiles="$(sort "$tmp/control/conffiles" 2>/dev/null | tr '\n' ' ')"
check_eq "conffiles" "/etc/vantage/agent.yaml /etc/vantage/probes.d/README " "$conffiles"
for s in postinst prerm postrm; do
    if [ -x "$tmp/control/$s" ] && sh -n "$tmp/control/$s"; then pass "maintainer script $s present, executable, parses"
    else fail "maintainer script $s" "executable, valid sh" "$(ls -l "$tmp/control/$s" 2>&1)"; fi
done
if grep -q 'vantage check --config' "$tmp/control/postinst" 2>/dev/null; then
    pass "postinst runs 'vantage check --config'"
else fail "postinst runs 'vantage check --config'" "a call in postinst" "none"; fi
# Commands only: drop comments and the echo'ed advice to the admin.
starts="$(grep -Ev '^[[:space:]]*#|^[[:space:]]*echo ' "$tmp/control/postinst" \
    | grep -E 'systemctl .*(enable|start)|deb-systemd-helper +enable|deb-systemd-invoke +(start|restart)')"
if [ -n "$starts" ]; then
    fail "postinst does not enable/start the unit on install" "no enable/start (try-restart on upgrade only)" "$starts"
else pass "postinst does not enable/start the unit on install"; fi
if grep -q '/var/lib/private/vantage' "$tmp/control/postrm"; then pass "postrm purge removes DynamicUser state"
else fail "postrm purge removes DynamicUser state" "/var/lib/private/vantage in postrm" "not found"; fi

# postinst's reporting of `vantage check`, with a fake `vantage` first on
# PATH (this exercises the script, not the binary). Only the paths without a
# running systemd are reachable here: a container has no /run/systemd/system.
mkdir -p "$tmp/fake/ok" "$tmp/fake/bad"
printf '#!/bin/sh\necho "config ok"\nexit 0\n' >"$tmp/fake/ok/vantage"
printf '#!/bin/sh\necho "probes.d/shop.yaml: line 3: unknown step type" >&2\nexit 1\n' >"$tmp/fake/bad/vantage"
chmod +x "$tmp/fake/ok/vantage" "$tmp/fake/bad/vantage"
if [ ! -d /run/systemd/system ]; then
    out="$(PATH="$tmp/fake/bad:$PATH" sh "$tmp/control/postinst" configure "" 2>&1)"; rc=$?
    if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep -q 'WARNING' && printf '%s' "$out" | grep -q 'unknown step type'; then
        pass "postinst: failing check on install warns (with the check's output) and exits 0"
    else fail "postinst: failing check on install" "exit 0, WARNING + check output" "exit $rc: $out"; fi
    out="$(PATH="$tmp/fake/ok:$PATH" sh "$tmp/control/postinst" configure "" 2>&1)"; rc=$?
    if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep -q 'check passed' && printf '%s' "$out" | grep -q 'enable --now'; then
        pass "postinst: passing check on install reports it and tells how to start"
    else fail "postinst: passing check on install" "exit 0, 'check passed', 'enable --now' hint" "exit $rc: $out"; fi
    out="$(PATH="$tmp/fake/bad:$PATH" sh "$tmp/control/postinst" configure 0.0.1-1 2>&1)"; rc=$?
    if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep -q 'NOT restarting'; then
        pass "postinst: failing check on upgrade does not restart, exits 0"
    else fail "postinst: failing check on upgrade" "exit 0, 'NOT restarting'" "exit $rc: $out"; fi
fi

# --- lintian ------------------------------------------------------------------
# Every override must be justified by a comment line directly above it.
unjustified="$(awk '/^[[:space:]]*#/ { c = 1; next } /^[[:space:]]*$/ { c = 0; next } { if (!c) print; c = 0 }' \
    packaging/debian/lintian-overrides)"
check_eq "every lintian override has a comment" "" "$unjustified"
if need_pkg lintian lintian; then
    # lintian leaves an mldbm-elf-* file in TMPDIR: keep it in ours, removed on exit.
    TMPDIR="$tmp" lintian --info --display-info --fail-on error,warning "$deb" >"$tmp/lintian" 2>&1
    rc=$?
    tags="$(grep -E '^[EW]: ' "$tmp/lintian" | tr '\n' ';')"
    if [ "$rc" -eq 0 ] && [ -z "$tags" ]; then
        pass "lintian: no errors or warnings ($(grep -c '^I: ' "$tmp/lintian") info, $(grep -c '^N: ' "$tmp/lintian") notes lines)"
        grep -E '^[IP]: ' "$tmp/lintian" | sed 's/^/     /'
    else
        fail "lintian clean" "exit 0, no E:/W: tags" "exit $rc: $tags"
        grep -E '^[EWIPO]: ' "$tmp/lintian" | sed 's/^/     /'
        echo "     (full lintian --info output: rerun 'lintian --info $deb')"
    fi
else
    fail "lintian available" "lintian installed (apt-get install lintian)" "not installed"
fi

# --- extracted layout ---------------------------------------------------------
# dpkg-deb -x, not `dpkg --root`: dpkg --root runs the maintainer scripts
# chrooted into the scratch root (which has no /bin/sh), and with
# --force-script-chrootless it would run them against THIS host instead
# (postrm purge deletes /var/lib/vantage). Neither is side-effect free.
root="$tmp/root"
mkdir -p "$root"
dpkg-deb -x "$deb" "$root"
if cmp -s "$root/lib/systemd/system/vantage.service" systemd/vantage.service; then pass "packaged unit == systemd/vantage.service"
else fail "packaged unit == systemd/vantage.service" "identical" "differs"; fi
if cmp -s "$root/etc/vantage/agent.yaml" packaging/agent.yaml; then pass "packaged agent.yaml == packaging/agent.yaml"
else fail "packaged agent.yaml == packaging/agent.yaml" "identical" "differs"; fi
if file -b "$root/usr/bin/vantage" 2>/dev/null | grep -q ELF || head -c 4 "$root/usr/bin/vantage" | grep -q 'ELF'; then
    pass "/usr/bin/vantage is an ELF binary"
else fail "/usr/bin/vantage is an ELF binary" "ELF" "$(head -c 40 "$root/usr/bin/vantage" | tr -c '[:print:]' '.')"; fi
ver_out="$("$root/usr/bin/vantage" --version 2>&1)"
case "$ver_out" in
    *"$cargo_version"*) pass "vantage --version reports $cargo_version" ;;
    *) fail "vantage --version" "output containing $cargo_version" "$ver_out" ;;
esac
for w in probes agent; do
    if "$root/usr/bin/vantage" schema "$w" | cmp -s - "$root/usr/share/vantage/schema/$w.schema.json"; then
        pass "packaged $w.schema.json == vantage schema $w"
    else fail "packaged $w.schema.json" "identical to 'vantage schema $w'" "differs"; fi
done
for m in vantage vantage-run vantage-check; do
    if gzip -dc "$root/usr/share/man/man1/$m.1.gz" 2>/dev/null | grep -q '^\.TH'; then pass "man page $m.1.gz is roff (.TH)"
    else fail "man page $m.1.gz" "gzipped roff with .TH" "$(gzip -dc "$root/usr/share/man/man1/$m.1.gz" 2>&1 | head -c 80)"; fi
done
if bash -n "$root/usr/share/bash-completion/completions/vantage" 2>"$tmp/bashn"; then pass "bash completion parses"
else fail "bash completion parses" "bash -n ok" "$(head -3 "$tmp/bashn")"; fi
if grep -q '^#compdef vantage' "$root/usr/share/zsh/vendor-completions/_vantage"; then pass "zsh completion starts with #compdef vantage"
else fail "zsh completion" "#compdef vantage" "$(head -1 "$root/usr/share/zsh/vendor-completions/_vantage")"; fi
if grep -q 'complete -c vantage' "$root/usr/share/fish/vendor_completions.d/vantage.fish"; then pass "fish completion has 'complete -c vantage'"
else fail "fish completion" "complete -c vantage" "$(head -1 "$root/usr/share/fish/vendor_completions.d/vantage.fish")"; fi

# The packaged default config must pass the packaged binary's own check (the
# probes dir re-pointed into the scratch root; it holds only the README).
sed "s#\[/etc/vantage/probes.d\]#[$root/etc/vantage/probes.d]#" "$root/etc/vantage/agent.yaml" >"$tmp/agent.yaml"
if chk="$("$root/usr/bin/vantage" check --config "$tmp/agent.yaml" 2>&1)"; then pass "vantage check accepts the packaged default agent.yaml"
else fail "vantage check accepts the packaged default agent.yaml" "exit 0" "exit $?: $(printf '%s' "$chk" | head -5)"; fi

# `vantage run` hands over to the packaged agent binary (same PID, found
# through ../libexec/vantage/ from /usr/bin), built from the same sources.
printf 'id: deb-test\nlocation: here\nprobes: []\nadmin: {listen: "127.0.0.1:0"}\n' >"$tmp/run.yaml"
"$root/usr/bin/vantage" --log-format text run --config "$tmp/run.yaml" >"$tmp/run.out" 2>&1 &
run_pid=$!
exe=""
for _ in $(seq 1 50); do
    exe="$(readlink "/proc/$run_pid/exe" 2>/dev/null)"
    case "$exe" in *vantage-agent) break ;; esac
    sleep 0.1
done
kill -TERM "$run_pid" 2>/dev/null
wait "$run_pid"
if [ "$exe" = "$root/usr/libexec/vantage/vantage-agent" ] && ! grep -q 'another build' "$tmp/run.out"; then
    pass "vantage run hands over to /usr/libexec/vantage/vantage-agent (same PID, same build)"
else fail "vantage run hands over to the packaged agent" "/proc/PID/exe = $root/usr/libexec/vantage/vantage-agent, no build warning" "exe=$exe: $(head -3 "$tmp/run.out")"; fi

# --- systemd unit -------------------------------------------------------------
# systemd-analyze verify runs without a running systemd: it loads the unit
# into a throwaway manager in test mode. It does require every ExecStart=
# binary to exist and be executable on THIS host, so we verify a copy whose
# /usr/bin/vantage points at the packaged binary extracted above (nothing is
# stubbed). --root= does not help: verify then needs a whole unit tree
# (sysinit.target, ...) inside the root. --man=no: the man pages are not
# installed on this host. verify exits 0 on many "ignoring" parse errors, so
# any output at all counts as a failure.
if need_pkg systemd-analyze systemd; then
    mkdir -p "$tmp/unit"
    sed "s#/usr/bin/vantage#$root/usr/bin/vantage#g" "$root/lib/systemd/system/vantage.service" >"$tmp/unit/vantage.service"
    vout="$(systemd-analyze verify --man=no "$tmp/unit/vantage.service" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ] && [ -z "$vout" ]; then pass "systemd-analyze verify vantage.service"
    else fail "systemd-analyze verify vantage.service" "exit 0, no output" "exit $rc: $vout"; fi

    sout="$(systemd-analyze security --offline=true "$root/lib/systemd/system/vantage.service" 2>&1)"
    exposure="$(printf '%s\n' "$sout" | sed -n 's/.*Overall exposure level for vantage.service: \([0-9.]*\).*/\1/p')"
    if [ -z "$exposure" ]; then
        fail "systemd-analyze security --offline=true" "an overall exposure level" "$(printf '%s' "$sout" | tail -3)"
    elif awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e + 0 <= m + 0) }'; then
        pass "systemd-analyze security exposure $exposure <= $max_exposure"
    else
        fail "systemd-analyze security exposure" "<= $max_exposure" "$exposure"
        printf '%s\n' "$sout" | grep '✗' | sed 's/^/     /'
    fi
    recorded="$(sed -n 's/^#.*-> overall exposure \([0-9.]*\).*/\1/p' systemd/vantage.service | head -1)"
    check_eq "exposure recorded at the top of the unit matches" "$exposure" "$recorded"
else
    fail "systemd-analyze available" "systemd-analyze (apt-get install systemd)" "not installed"
fi

finish
