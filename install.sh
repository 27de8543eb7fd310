#!/usr/bin/env bash
# Install or upgrade Hearth on a Debian / Raspberry Pi OS host (x86_64, aarch64, armv7).
#
#   sudo ./install.sh --server-name example.org --acme-email me@example.org
#
# Gets the binary (--binary PATH; else a release build when run inside a checkout; else the
# release for this architecture from --release-url), creates the `hearth` system user,
# /etc/hearth/hearth.toml (kept if it exists), /var/lib/hearth, the systemd unit, and starts
# the service. Running it again upgrades the binary and unit in place; data and config stay.
#
#   --uninstall            remove binary, unit and user; keep config and data
#   --uninstall --purge    also delete /etc/hearth and /var/lib/hearth
#   --root DIR             install into DIR instead of / (packaging, tests)
#   --no-start             do not enable/start the service
#   --no-tls               plain HTTP on 127.0.0.1:8008 behind a reverse proxy (no ACME)
set -euo pipefail

ROOT=""
BINARY=""
SERVER_NAME=""
ACME_EMAIL=""
# Where release binaries are published, as <URL>/hearth-<target triple>; no default, since
# the project has no release host yet: pass --release-url or set HEARTH_RELEASE_URL.
RELEASE_URL="${HEARTH_RELEASE_URL:-}"
UNINSTALL=0
PURGE=0
START=1
TLS=1

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?}"; shift 2 ;;
        --binary) BINARY="${2:?}"; shift 2 ;;
        --server-name) SERVER_NAME="${2:?}"; shift 2 ;;
        --acme-email) ACME_EMAIL="${2:?}"; shift 2 ;;
        --release-url) RELEASE_URL="${2:?}"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --no-start) START=0; shift ;;
        --no-tls) TLS=0; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

SRC_DIR="$(cd "$(dirname "$0")" && pwd)"
BIN_PATH="$ROOT/usr/local/bin/hearth"
CONF_DIR="$ROOT/etc/hearth"
CONF="$CONF_DIR/hearth.toml"
DATA_DIR="$ROOT/var/lib/hearth"
UNIT="$ROOT/etc/systemd/system/hearth.service"

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or pass --root DIR"
fi

if [ "$UNINSTALL" = 1 ]; then
    systemctl disable --now hearth.service 2>/dev/null || true
    rm -f "$BIN_PATH" "$UNIT"
    systemctl daemon-reload 2>/dev/null || true
    if [ "$PURGE" = 1 ]; then
        rm -rf "$CONF_DIR" "$DATA_DIR"
        userdel hearth 2>/dev/null || true
        echo "Hearth removed, with its configuration and data."
    else
        echo "Hearth removed. Kept: $CONF_DIR and $DATA_DIR (--uninstall --purge deletes them)."
    fi
    exit 0
fi

# 1. The binary.
tmp_bin="$(mktemp)"
trap 'rm -f "$tmp_bin"' EXIT
if [ -n "$BINARY" ]; then
    [ -x "$BINARY" ] || die "--binary $BINARY is not an executable file"
    cp "$BINARY" "$tmp_bin"
elif [ -f "$SRC_DIR/Cargo.toml" ] && grep -q '^name = "hearth"' "$SRC_DIR/Cargo.toml"; then
    echo "Building Hearth (release) in $SRC_DIR ..."
    (cd "$SRC_DIR" && cargo build --release --locked)
    cp "$SRC_DIR/target/release/hearth" "$tmp_bin"
else
    case "$(uname -m)" in
        x86_64|amd64) arch=x86_64-unknown-linux-gnu ;;
        aarch64|arm64) arch=aarch64-unknown-linux-gnu ;;
        armv7l|armv7*) arch=armv7-unknown-linux-gnueabihf ;;
        *) die "no release for $(uname -m); build from source (cargo build --release)" ;;
    esac
    [ -n "$RELEASE_URL" ] || die "no --binary given, not run from a checkout, and no --release-url (or HEARTH_RELEASE_URL) to download from"
    echo "Downloading $RELEASE_URL/hearth-$arch ..."
    curl -fsSL -o "$tmp_bin" "$RELEASE_URL/hearth-$arch" || die "download failed"
fi
chmod 0755 "$tmp_bin"
"$tmp_bin" --version >/dev/null 2>&1 || die "the binary does not run on this host"
upgrade=0
[ -e "$BIN_PATH" ] && upgrade=1
install -D -m 0755 "$tmp_bin" "$BIN_PATH"

# 2. The system user.
if ! id hearth >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/hearth --no-create-home \
        --shell /usr/sbin/nologin hearth
fi

# 3. Config (only on first install) and data directory.
install -d -m 0755 "$CONF_DIR"
if [ ! -e "$CONF" ]; then
    if [ -z "$SERVER_NAME" ]; then
        if [ -t 0 ]; then
            read -r -p "Server name (the part after : in @you:example.org): " SERVER_NAME
        fi
        [ -n "$SERVER_NAME" ] || die "--server-name is required on first install"
    fi
    if [ "$TLS" = 1 ] && [ -z "$ACME_EMAIL" ]; then
        if [ -t 0 ]; then
            read -r -p "E-mail for Let's Encrypt (certificate expiry notices): " ACME_EMAIL
        fi
        [ -n "$ACME_EMAIL" ] || die "--acme-email is required (or --no-tls behind a proxy)"
    fi
    {
        echo "# Written by install.sh; see 'hearth init' for every key."
        echo "server_name = \"$SERVER_NAME\""
        echo "data_dir = \"/var/lib/hearth\""
        echo
        echo "[registration]"
        echo "mode = \"token\"   # create tokens with: hearth token create"
        echo
        echo "[storage]"
        echo "cache_mb = 16"
        echo
        if [ "$TLS" = 1 ]; then
            echo "[[listeners]]"
            echo "bind = \"127.0.0.1:8008\""
            echo
            echo "[tls]"
            echo "mode = \"acme\""
            echo "email = \"$ACME_EMAIL\""
            echo "listeners = [\"[::]:443\", \"[::]:8448\"]"
        else
            echo "[[listeners]]"
            echo "bind = \"127.0.0.1:8008\""
        fi
    } > "$CONF.tmp"
    chmod 0640 "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    chgrp hearth "$CONF" 2>/dev/null || true
    echo "Wrote $CONF"
else
    echo "Keeping $CONF"
fi
install -d -m 0700 "$DATA_DIR"
chown hearth:hearth "$DATA_DIR" 2>/dev/null || true

# 4. The systemd unit (hardened; see packaging/hearth.service).
[ -e "$SRC_DIR/packaging/hearth.service" ] || die "packaging/hearth.service not found next to install.sh"
install -d "$(dirname "$UNIT")"
sed 's#/usr/bin/hearth#/usr/local/bin/hearth#' "$SRC_DIR/packaging/hearth.service" > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"
# The unit grants CAP_NET_BIND_SERVICE (AmbientCapabilities) for ports 443/8448; setcap on
# the file covers running it by hand.
setcap cap_net_bind_service=+ep "$BIN_PATH" 2>/dev/null || true

# 5. Start.
if [ "$START" = 1 ]; then
    systemctl daemon-reload
    systemctl enable hearth.service
    if [ "$upgrade" = 1 ]; then
        systemctl restart hearth.service
    else
        systemctl start hearth.service
    fi
fi

name="${SERVER_NAME:-$(sed -n 's/^server_name = "\(.*\)"/\1/p' "$CONF")}"
cat <<EOF

Hearth is $( [ "$upgrade" = 1 ] && echo upgraded || echo installed ).
Next steps:
  1. DNS: an A/AAAA record for $name pointing at this host; open ports 443 and 8448.
  2. First admin user:  sudo -u hearth hearth --config /etc/hearth/hearth.toml user create admin
     (it prompts for nothing: set HEARTH_PASSWORD or pass --password)
  3. Check what the world sees:  hearth --config /etc/hearth/hearth.toml check --data /var/lib/hearth
  4. Backups:  sudo -u hearth hearth --config /etc/hearth/hearth.toml backup /srv/backup/hearth-\$(date +%F)
Logs: journalctl -u hearth -f
EOF
