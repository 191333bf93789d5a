#!/bin/sh
# install.sh: set up (or remove) the swarm worker daemons on this host, from
# the package `swarm enroll --package` / `swarm package` wrote for it.
#
#   sudo ./install.sh                  install or bring up to date, enable + start the unit
#   sudo ./install.sh --no-systemd     same, but start the updater directly (no systemd)
#   sudo ./install.sh --uninstall      stop and remove it; keeps /opt/swarm/releases
#   sudo ./install.sh --uninstall --purge   also /opt/swarm entirely and the swarm user
#
# Idempotent: a second run with the same package changes nothing (no file is
# rewritten, no mode touched, the running updater is left alone). Every path
# comes from swarm-updater.service beside this script, the unit it installs.
set -eu

PKG=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
UNIT_SRC=$PKG/swarm-updater.service
UNIT_NAME=swarm-updater.service
UNIT_DST=/etc/systemd/system/$UNIT_NAME
SVC_USER=swarm

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n 's/^#   sudo /sudo /p' "$0"
    exit "$1"
}

NO_SYSTEMD=0
UNINSTALL=0
PURGE=0
for arg in "$@"; do
    case $arg in
        --no-systemd) NO_SYSTEMD=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) usage 0 ;;
        *) printf 'install.sh: unknown option %s\n' "$arg" >&2; usage 2 ;;
    esac
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
[ "$(id -u)" = 0 ] || die "run me as root (sudo $0)"
[ -f "$UNIT_SRC" ] || die "$UNIT_SRC is missing: unpack the whole package"

# `Environment=KEY=VALUE` of the unit, one per line.
unit_env() { sed -n 's/^Environment=//p' "$UNIT_SRC"; }
unit_var() { unit_env | sed -n "s/^$1=//p"; }

INSTALL_DIR=$(unit_var SWARM_UPDATER_INSTALL_DIR)
AGENT_DIR=$(unit_var SWARM_UPDATER_AGENT_DIR)
UPDATER_DIR=$(unit_var SWARM_UPDATER_BUNDLE_DIR)
UPDATER_BIN=$(sed -n 's/^ExecStart=//p' "$UNIT_SRC")
ENV_FILE=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$UNIT_SRC")
BIN_DIR=$(dirname -- "$UPDATER_BIN")
CONF_DIR=$(dirname -- "$ENV_FILE")
PIDFILE=$INSTALL_DIR/updater.direct.pid
LOG=$INSTALL_DIR/updater.direct.log
for p in "$INSTALL_DIR" "$AGENT_DIR" "$UPDATER_DIR" "$UPDATER_BIN" "$ENV_FILE"; do
    case $p in
        /?*) ;;
        *) die "$UNIT_SRC: expected absolute paths, got '$p'" ;;
    esac
done
[ "$INSTALL_DIR" != / ] || die "refusing install dir /"

CHANGED=0
changed() { CHANGED=1; say "$*"; }

# Mode/owner/group of a path as `stat` prints them: 600 swarm swarm.
attrs() { stat -c '%a %U %G' -- "$1"; }

# fix PATH MODE OWNER GROUP: set mode and owner only when they differ.
fix() {
    if [ "$(attrs "$1")" != "$2 $3 $4" ]; then
        chown "$3:$4" -- "$1"
        chmod "$2" -- "$1"
        changed "set $1 to $2 $3:$4"
    fi
}

# dir PATH MODE OWNER GROUP
dir() {
    if [ ! -d "$1" ]; then
        mkdir -p -- "$1"
        changed "created $1"
    fi
    fix "$@"
}

# put SRC DST MODE OWNER GROUP: copy only when the contents differ, through a
# temp file and a rename (so a running binary is replaced, never rewritten).
put() {
    if ! cmp -s -- "$1" "$2"; then
        tmp=$(dirname -- "$2")/.$(basename -- "$2").install-$$
        (umask 077 && cp -- "$1" "$tmp")
        chown "$4:$5" -- "$tmp"
        chmod "$3" -- "$tmp"
        mv -f -- "$tmp" "$2"
        changed "installed $2"
    fi
    fix "$2" "$3" "$4" "$5"
}

nologin_shell() {
    for s in /usr/sbin/nologin /sbin/nologin /bin/false; do
        if [ -x "$s" ]; then
            echo "$s"
            return
        fi
    done
    echo /bin/false
}

ensure_user() {
    id -u "$SVC_USER" >/dev/null 2>&1 && return
    if command -v useradd >/dev/null 2>&1; then
        getent group "$SVC_USER" >/dev/null 2>&1 || groupadd --system "$SVC_USER"
        useradd --system --gid "$SVC_USER" --no-create-home --home-dir "$INSTALL_DIR" \
            --shell "$(nologin_shell)" --comment "swarm worker daemons" "$SVC_USER"
    elif command -v adduser >/dev/null 2>&1; then
        # busybox (Alpine)
        addgroup -S "$SVC_USER" 2>/dev/null || true
        adduser -S -D -H -h "$INSTALL_DIR" -s "$(nologin_shell)" -G "$SVC_USER" "$SVC_USER"
    else
        die "neither useradd nor adduser found: create a system user '$SVC_USER' by hand"
    fi
    changed "created system user $SVC_USER"
}

# Field 22 of /proc/PID/stat (start time in clock ticks), after the `(comm)`.
start_time() {
    [ -r "/proc/$1/stat" ] || return 1
    sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f20
}

# alive PID START: the process PID exists and started at START.
alive() {
    [ -n "$1" ] && [ -n "$2" ] && [ "$(start_time "$1" 2>/dev/null)" = "$2" ]
}

# stop_pid PID START [group]: SIGTERM (the process group with `group`), up to
# 15 s of grace, then SIGKILL.
stop_pid() {
    alive "$1" "$2" || return 0
    target=$1
    [ "${3:-}" = group ] && target=-$1
    kill -s TERM -- "$target" 2>/dev/null || true
    i=0
    while alive "$1" "$2" && [ $i -lt 150 ]; do
        sleep 0.1 2>/dev/null || sleep 1
        i=$((i + 1))
    done
    if alive "$1" "$2"; then
        kill -s KILL -- "$target" 2>/dev/null || true
    fi
    say "stopped pid $1"
}

# The updater started by --no-systemd, as "PID START" in its pidfile.
direct_pid() { [ -f "$PIDFILE" ] && cut -d' ' -f1 "$PIDFILE" || true; }
direct_start() { [ -f "$PIDFILE" ] && cut -d' ' -f2 "$PIDFILE" || true; }
direct_running() { alive "$(direct_pid)" "$(direct_start)"; }

stop_direct() {
    stop_pid "$(direct_pid)" "$(direct_start)"
    rm -f -- "$PIDFILE"
}

# The agent the updater started: its JSON pidfile, pid checked by start time.
stop_agent() {
    f=$INSTALL_DIR/agent.pid
    [ -f "$f" ] || return 0
    pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$f" | head -n 1)
    start=$(sed -n 's/.*"start_time": *\([0-9][0-9]*\).*/\1/p' "$f" | head -n 1)
    stop_pid "$pid" "$start" group
}

has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# The updater's environment for --no-systemd: the unit's Environment= lines,
# then the per-host file (quotes stripped), then not supervised.
direct_env() {
    unit_env
    if [ -f "$ENV_FILE" ]; then
        sed -n 's/^\(SWARM_[A-Z_]*\)="\{0,1\}\([^"]*\)"\{0,1\}$/\1=\2/p' "$ENV_FILE"
    fi
    echo SWARM_UPDATER_SUPERVISED=false
}

# updater MODE: run the updater as $SVC_USER with a clean environment (the
# unit's Environment= lines, updater.env, not supervised), cwd = the install
# dir, umask 077. MODE check: `--check` in the foreground (validates flags,
# bundle, key and install dir without binding); MODE start: detached in its
# own session, output appended to $LOG, its pid in $!.
updater() {
    mode=$1
    if command -v setpriv >/dev/null 2>&1; then
        set -- setpriv --reuid="$SVC_USER" --regid="$SVC_USER" --init-groups --
    elif command -v runuser >/dev/null 2>&1; then
        set -- runuser -u "$SVC_USER" --
    else
        die "neither setpriv nor runuser found: cannot drop to $SVC_USER"
    fi
    set -- "$@" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$INSTALL_DIR"
    envs=$(direct_env)
    while IFS= read -r kv; do
        [ -n "$kv" ] && set -- "$@" "$kv"
    done <<EOF
$envs
EOF
    set -- "$@" "$UPDATER_BIN"
    if [ "$mode" = check ]; then
        (umask 077 && cd -- "$INSTALL_DIR" && exec "$@" --check) </dev/null
    else
        (umask 077 && cd -- "$INSTALL_DIR" && exec setsid "$@") </dev/null >>"$LOG" 2>&1 &
    fi
}

# Before (re)starting on changed files: the new configuration must pass the
# updater's own --check, so a bad bundle or setting is reported here, not as
# a crash loop.
check_config() {
    if ! out=$(updater check 2>&1); then
        printf '%s\n' "$out" >&2
        die "worker-updater --check refuses this configuration (above); nothing was (re)started"
    fi
}

start_direct() {
    touch -- "$LOG"
    fix "$LOG" 600 "$SVC_USER" "$SVC_USER"
    offset=$(wc -c <"$LOG")
    updater start
    pid=$!
    i=0
    until tail -c +$((offset + 1)) -- "$LOG" | grep -q '^listening on '; do
        if ! kill -0 "$pid" 2>/dev/null || [ $i -ge 300 ]; then
            tail -n 20 -- "$LOG" >&2 || true
            die "the updater did not start (log: $LOG)"
        fi
        sleep 0.1 2>/dev/null || sleep 1
        i=$((i + 1))
    done
    echo "$pid $(start_time "$pid")" >"$PIDFILE"
    chmod 600 -- "$PIDFILE"
    say "started the updater directly: pid $pid, $(tail -c +$((offset + 1)) -- "$LOG" | grep -m1 '^listening on ')"
}

uninstall() {
    if has_systemd && [ -f "$UNIT_DST" ]; then
        systemctl disable --now --quiet "$UNIT_NAME" || true
        rm -f -- "$UNIT_DST"
        systemctl daemon-reload
        say "removed the unit $UNIT_DST"
    fi
    stop_direct
    stop_agent
    rm -f -- "$UPDATER_BIN" "$BIN_DIR/worker-agent" "$ENV_FILE"
    rm -rf -- "$AGENT_DIR" "$UPDATER_DIR"
    rmdir -- "$CONF_DIR" 2>/dev/null || true
    if [ "$PURGE" = 1 ]; then
        rm -rf -- "$INSTALL_DIR"
        if id -u "$SVC_USER" >/dev/null 2>&1; then
            if command -v userdel >/dev/null 2>&1; then
                userdel "$SVC_USER"
                groupdel "$SVC_USER" 2>/dev/null || true
            else
                deluser "$SVC_USER" 2>/dev/null || true
            fi
        fi
        say "purged $INSTALL_DIR and the user $SVC_USER"
    elif [ -d "$INSTALL_DIR" ]; then
        # Everything but the releases and the operator's per-host settings.
        find "$INSTALL_DIR" -mindepth 1 -maxdepth 1 ! -name releases ! -name .env.local \
            -exec rm -rf -- {} +
        say "kept $INSTALL_DIR/releases (and .env.local); --purge removes them and the user"
    fi
    say "uninstalled"
}

install_files() {
    ensure_user
    dir "$INSTALL_DIR" 750 "$SVC_USER" "$SVC_USER"
    dir "$CONF_DIR" 755 root root
    for b in "$AGENT_DIR:agent:worker" "$UPDATER_DIR:updater:updater"; do
        dst=${b%%:*}
        rest=${b#*:}
        src=$PKG/${rest%%:*}
        stem=${rest#*:}
        dir "$dst" 700 "$SVC_USER" "$SVC_USER"
        for f in ca.crt "$stem.crt" "$stem.key"; do
            [ -f "$src/$f" ] || die "$src/$f is missing: unpack the whole package"
            put "$src/$f" "$dst/$f" 600 "$SVC_USER" "$SVC_USER"
        done
        # The release-signing public key: its updater takes only signed releases.
        if [ -f "$src/release.pub" ]; then
            put "$src/release.pub" "$dst/release.pub" 644 "$SVC_USER" "$SVC_USER"
        fi
    done
    put "$PKG/updater.env" "$ENV_FILE" 644 root root
    dir "$BIN_DIR" 755 root root
    put "$PKG/bin/worker-updater" "$UPDATER_BIN" 755 root root
    put "$PKG/bin/worker-agent" "$BIN_DIR/worker-agent" 755 root root
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

if [ "$NO_SYSTEMD" = 0 ] && ! has_systemd; then
    die "systemd is not running here: use --no-systemd to start the updater directly"
fi

install_files

if [ "$NO_SYSTEMD" = 1 ]; then
    if direct_running; then
        if [ "$CHANGED" = 0 ]; then
            say "up to date; the updater runs (pid $(direct_pid))"
            exit 0
        fi
        check_config
        stop_direct
    else
        check_config
    fi
    start_direct
    exit 0
fi

UNIT_CHANGED=$CHANGED
CHANGED=0
put "$UNIT_SRC" "$UNIT_DST" 644 root root
if [ "$CHANGED" = 1 ]; then
    systemctl daemon-reload
fi
[ "$UNIT_CHANGED" = 1 ] && CHANGED=1
if [ "$CHANGED" = 1 ] || ! systemctl is-active --quiet "$UNIT_NAME"; then
    check_config
fi
if ! systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
    systemctl enable --quiet "$UNIT_NAME"
    changed "enabled $UNIT_NAME"
fi
if ! systemctl is-active --quiet "$UNIT_NAME"; then
    systemctl start "$UNIT_NAME"
    say "started $UNIT_NAME"
elif [ "$CHANGED" = 1 ]; then
    # Only the updater restarts (KillMode=process): the agent keeps serving.
    systemctl restart "$UNIT_NAME"
    say "restarted $UNIT_NAME"
fi
if [ "$CHANGED" = 0 ]; then
    say "up to date; $UNIT_NAME is active"
fi
