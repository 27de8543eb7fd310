#!/usr/bin/env bash
# install.sh in a throwaway root, with fake systemctl/useradd/setcap on PATH: checks the files
# it writes, idempotency (a second run keeps config and data), and --uninstall.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/debug/hearth}"
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build first)"; exit 1; }
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
mkdir -p "$T/fake" "$T/root"
for cmd in systemctl useradd userdel setcap chgrp chown; do
    printf '#!/bin/sh\necho "%s $*" >> "%s/calls"\n' "$cmd" "$T" > "$T/fake/$cmd"
    chmod +x "$T/fake/$cmd"
done
# `id hearth` fails until the fake useradd ran.
printf '#!/bin/sh\n[ "$1" = -u ] && { echo 0; exit 0; }\ngrep -q "^useradd" "%s/calls" 2>/dev/null\n' "$T" > "$T/fake/id"
chmod +x "$T/fake/id"
export PATH="$T/fake:$PATH"
fail() { echo "install test: $*" >&2; exit 1; }

./install.sh --root "$T/root" --binary "$BIN" --server-name example.org --acme-email a@example.org > "$T/out1"
R="$T/root"
[ -x "$R/usr/local/bin/hearth" ] || fail "binary not installed"
grep -q 'server_name = "example.org"' "$R/etc/hearth/hearth.toml" || fail "config"
grep -q 'email = "a@example.org"' "$R/etc/hearth/hearth.toml" || fail "acme email"
[ "$(stat -c %a "$R/var/lib/hearth")" = 700 ] || fail "data dir mode"
grep -q '^ReadWritePaths=/var/lib/hearth' "$R/etc/systemd/system/hearth.service" || fail "unit"
grep -q '^ExecStart=/usr/local/bin/hearth ' "$R/etc/systemd/system/hearth.service" || fail "unit path"
grep -q '^useradd --system' "$T/calls" || fail "user not created"
grep -q '^systemctl start hearth.service' "$T/calls" || fail "not started"
grep -q 'Next steps' "$T/out1" || fail "no next steps"
# The written config is valid for the binary itself.
out="$("$BIN" --config "$R/etc/hearth/hearth.toml" check --data "$T/none" 2>&1 || true)"
case "$out" in *"holds no database"*) ;; *) fail "config does not load: $out" ;; esac

# Second run: upgrade in place, config and data kept, user not re-created.
echo "custom = kept" >> "$R/etc/hearth/hearth.toml"
touch "$R/var/lib/hearth/marker"
./install.sh --root "$T/root" --binary "$BIN" > "$T/out2"
grep -q 'custom = kept' "$R/etc/hearth/hearth.toml" || fail "config overwritten"
[ -e "$R/var/lib/hearth/marker" ] || fail "data lost"
[ "$(grep -c '^useradd' "$T/calls")" = 1 ] || fail "user created twice"
grep -q '^systemctl restart hearth.service' "$T/calls" || fail "upgrade did not restart"
grep -q 'upgraded' "$T/out2" || fail "upgrade not reported"

# Uninstall keeps data and config; --purge removes them.
./install.sh --root "$T/root" --uninstall > /dev/null
[ ! -e "$R/usr/local/bin/hearth" ] || fail "binary left"
[ -e "$R/var/lib/hearth/marker" ] && [ -e "$R/etc/hearth/hearth.toml" ] || fail "uninstall removed data"
./install.sh --root "$T/root" --uninstall --purge > /dev/null
[ ! -e "$R/var/lib/hearth" ] || fail "purge left data"
echo "install.sh test: ok"
