#!/bin/sh
# Install evedge as a systemd service from this checkout. Idempotent: run it again to
# upgrade; an existing /etc/evedge/station.toml is never touched.
#
#   sudo systemd/install.sh [--now]           # user, venv, config, unit; enable (and start)
#   systemd/install.sh --dry-run              # print what it would do, change nothing
#   systemd/install.sh --destdir /tmp/root    # stage files under a root (no user, no systemctl)
#
# Options:
#   --dry-run       print every step, change nothing
#   --destdir DIR   install below DIR (also $DESTDIR); user creation and systemctl are skipped
#   --prefix DIR    where releases go (default /opt/evedge; the unit's paths follow): the
#                   venv is PREFIX/releases/<version>/venv, PREFIX/current links to it
#   --python PY     interpreter for the venv (default python3; needs 3.11+)
#   --skip-venv     do not create or update the venv nor switch PREFIX/current
#   --now           start (or restart) the service after enabling it
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=/opt/evedge
PYTHON=python3
DRY_RUN=0
SKIP_VENV=0
NOW=0
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --destdir) [ $# -ge 2 ] || { echo "install.sh: --destdir needs a directory" >&2; exit 2; }
                   DESTDIR=$2; shift ;;
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
                  PREFIX=$2; shift ;;
        --python) [ $# -ge 2 ] || { echo "install.sh: --python needs an interpreter" >&2; exit 2; }
                  PYTHON=$2; shift ;;
        --skip-venv) SKIP_VENV=1 ;;
        --now) NOW=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case $PREFIX in /*) ;; *) echo "install.sh: --prefix must be absolute: $PREFIX" >&2; exit 2 ;; esac

USER_NAME=evedge
CONF_DIR=/etc/evedge
UNIT_DIR=/etc/systemd/system
# The checkout's version names its release; updates add more beside it (agent/update).
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$CHECKOUT/pyproject.toml")
RELEASE=$PREFIX/releases/$VERSION
VENV=$RELEASE/venv
# On the real system the config is root:evedge; a staged tree has no such group yet.
SYSTEM=1
[ -n "$DESTDIR" ] && SYSTEM=0

say() { printf '%s\n' "$*"; }
# Run a command, or only show it with --dry-run.
run() {
    say "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo $0), or use --dry-run / --destdir" >&2
    exit 1
fi

# 1. The service user: system account, no login, no home; dialout for the RS-485 adapters.
if [ "$SYSTEM" = 1 ]; then
    getent group "$USER_NAME" >/dev/null 2>&1 || run groupadd --system "$USER_NAME"
    getent passwd "$USER_NAME" >/dev/null 2>&1 || run useradd --system --gid "$USER_NAME" \
        --home-dir /var/lib/evedge --no-create-home --shell /usr/sbin/nologin \
        --comment "evedge edge agent" "$USER_NAME"
    if ! id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx dialout; then
        run usermod --append --groups dialout "$USER_NAME"
    fi
else
    say "skip: user $USER_NAME and group dialout (staging under $DESTDIR)"
fi

# 2. The release's venv with the package built from this checkout (not editable: the
#    checkout may go), marked complete, and `current` switched to it in one rename.
if [ "$SKIP_VENV" = 0 ]; then
    [ -x "$DESTDIR$VENV/bin/python" ] || run "$PYTHON" -m venv "$DESTDIR$VENV"
    run "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade pip
    run "$DESTDIR$VENV/bin/python" -m pip install --quiet --upgrade "$CHECKOUT"
    say "+ echo evedge==$VERSION >$DESTDIR$RELEASE/COMPLETE"
    [ "$DRY_RUN" = 1 ] || echo "evedge==$VERSION" >"$DESTDIR$RELEASE/COMPLETE"
    run ln -sfn "$RELEASE" "$DESTDIR$PREFIX/.current.new"
    run mv -T "$DESTDIR$PREFIX/.current.new" "$DESTDIR$PREFIX/current"
else
    say "skip: venv $DESTDIR$VENV and $DESTDIR$PREFIX/current (--skip-venv)"
fi
# The boot check the unit runs before each start (ExecStartPre), outside the releases, and
# the interpreter it runs with: the real one behind the venvs, not a shim.
run install -D -m 0644 "$CHECKOUT/agent/update/probation.py" "$DESTDIR$PREFIX/boot-check.py"
BOOT_PY=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')

# 3. The station config from the example, only if there is none.
if [ "$SYSTEM" = 1 ]; then
    run install -d -m 0750 -o root -g "$USER_NAME" "$CONF_DIR"
else
    run install -d -m 0750 "$DESTDIR$CONF_DIR"
fi
if [ -e "$DESTDIR$CONF_DIR/station.toml" ]; then
    say "keep: $DESTDIR$CONF_DIR/station.toml exists"
elif [ "$SYSTEM" = 1 ]; then
    run install -m 0640 -o root -g "$USER_NAME" "$CHECKOUT/config/station.example.toml" \
        "$CONF_DIR/station.toml"
    say "edit $CONF_DIR/station.toml, then: $PREFIX/current/venv/bin/evedge config check $CONF_DIR/station.toml"
else
    run install -m 0640 "$CHECKOUT/config/station.example.toml" "$DESTDIR$CONF_DIR/station.toml"
fi

# 4. The notes the unit's Documentation= names, and the unit, with its paths under PREFIX.
run install -D -m 0644 "$CHECKOUT/README.md" "$DESTDIR$PREFIX/README.md"
run install -D -m 0644 "$CHECKOUT/systemd/README.md" "$DESTDIR$PREFIX/systemd/README.md"
run install -d -m 0755 "$DESTDIR$UNIT_DIR"
say "+ install -m 0644 systemd/evedge.service $DESTDIR$UNIT_DIR/evedge.service (prefix $PREFIX)"
if [ "$DRY_RUN" = 0 ]; then
    sed -e "s#/opt/evedge#$PREFIX#g" -e "s#=+/usr/bin/python3 #=+$BOOT_PY #" \
        "$CHECKOUT/systemd/evedge.service" \
        >"$DESTDIR$UNIT_DIR/evedge.service.tmp"
    chmod 0644 "$DESTDIR$UNIT_DIR/evedge.service.tmp"
    mv "$DESTDIR$UNIT_DIR/evedge.service.tmp" "$DESTDIR$UNIT_DIR/evedge.service"
fi

# 5. Enable (and start) it.
if [ "$SYSTEM" = 0 ]; then
    say "skip: systemctl daemon-reload / enable (staging under $DESTDIR)"
elif [ "$DRY_RUN" = 0 ] && [ ! -d /run/systemd/system ]; then
    say "skip: systemd is not running here; on the target run: systemctl daemon-reload &&" \
        "systemctl enable --now evedge"
else
    run systemctl daemon-reload
    run systemctl enable evedge.service
    [ "$NOW" = 1 ] && run systemctl restart evedge.service
fi
say "done"
