#!/bin/sh
# Installs the Continuum site agent, joins it to its control plane, and keeps it running.
#
# The control plane serves this file at /install.sh and `continuum token create` prints
# the line to paste at the site. With the control plane's own CA it pins its key:
#   curl -fsSLk --pinnedpubkey 'sha256//…' https://HOST:8443/install.sh | sh -s -- TOKEN
# With a publicly trusted certificate (`serve --tls-cert`) it is a plain https line:
#   curl -fsSL https://HOST:8443/install.sh | sh -s -- TOKEN
#
# Run it again to repair or upgrade; `--uninstall` removes the agent, its service and
# its state. It works as root (system service, /usr/local) and as any other user (user
# service or a supervised background process, under ~/.local).
set -eu

# Filled in by the control plane that serves this file.
CONTINUUM_URL=${CONTINUUM_URL:-}
CONTINUUM_PIN=${CONTINUUM_PIN:-}

usage() {
    cat <<'EOF'
usage: install.sh TOKEN [options]      install, join and start the agent
       install.sh --uninstall          stop and remove the agent and its state

options:
  --name NAME               the site's name (default: from the token)
  --allow-registry REG      a registry the site accepts images from (repeatable;
                            `archive` for images shipped with releases)
  --cpus N                  CPU budget for the central team's services
  --memory SIZE             memory budget (e.g. 8GiB)
  --disk SIZE               disk budget for images (e.g. 50GiB)
  --engine URL|none         container engine socket (default: Docker's)
  --mode MODE               auto (default), systemd, openrc or supervised
  --prefix DIR              where the binary goes (default /usr/local, or ~/.local)
  --print-systemd-unit      print the systemd unit this would install, and stop
  --print-openrc-script     print the OpenRC service script this would install, and stop
EOF
}

say() { printf 'continuum: %s\n' "$*"; }
fail() {
    printf 'continuum: error: %s\n' "$1" >&2
    [ $# -gt 1 ] && printf 'continuum: what to do: %s\n' "$2" >&2
    exit 1
}

TOKEN="" NAME="" REGISTRIES="" CPUS="" MEMORY="" DISK="" ENGINE="" MODE=auto PREFIX=""
UNINSTALL=no PRINT_UNIT=no PRINT_OPENRC=no
while [ $# -gt 0 ]; do
    case $1 in
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        --allow-registry) REGISTRIES="$REGISTRIES ${2:?--allow-registry needs a value}"; shift 2 ;;
        --cpus) CPUS=${2:?--cpus needs a value}; shift 2 ;;
        --memory) MEMORY=${2:?--memory needs a value}; shift 2 ;;
        --disk) DISK=${2:?--disk needs a value}; shift 2 ;;
        --engine) ENGINE=${2:?--engine needs a value}; shift 2 ;;
        --mode) MODE=${2:?--mode needs a value}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a value}; shift 2 ;;
        --uninstall) UNINSTALL=yes; shift ;;
        --print-systemd-unit) PRINT_UNIT=yes; shift ;;
        --print-openrc-script) PRINT_OPENRC=yes; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; fail "unknown option $1" ;;
        *) [ -z "$TOKEN" ] || fail "more than one token given"; TOKEN=$1; shift ;;
    esac
done

if [ "$(id -u)" -eq 0 ]; then
    ROOT=yes
    PREFIX=${PREFIX:-/usr/local}
    STATE=/var/lib/continuum-agent
else
    ROOT=no
    [ -n "${HOME:-}" ] || fail "HOME is not set" "run as a user with a home directory, or as root"
    PREFIX=${PREFIX:-$HOME/.local}
    STATE=${XDG_STATE_HOME:-$HOME/.local/state}/continuum-agent
fi
# The agent updates itself in its own directory; bin/ holds a link to it. The launcher,
# a copy that self-updates never touch, runs it and takes back a bad update.
LIBDIR=$PREFIX/lib/continuum-agent
AGENT=$LIBDIR/continuum-agent
LAUNCHER=$LIBDIR/launcher
BIN=$PREFIX/bin/continuum-agent
SUPERVISOR=$LIBDIR/supervise
UNINSTALLER=$LIBDIR/uninstall.sh
if [ "$ROOT" = yes ]; then
    UNIT=/etc/systemd/system/continuum-agent.service
else
    UNIT=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/continuum-agent.service
fi
OPENRC=/etc/init.d/continuum-agent

systemctl_() {
    if [ "$ROOT" = yes ]; then systemctl "$@"; else systemctl --user "$@"; fi
}

has_systemd() {
    [ -d /run/systemd/system ] || return 1
    command -v systemctl >/dev/null 2>&1 || return 1
    [ "$ROOT" = yes ] || systemctl --user show-environment >/dev/null 2>&1
}

has_openrc() {
    [ "$ROOT" = yes ] && command -v openrc-run >/dev/null 2>&1 && command -v rc-service >/dev/null 2>&1
}

pick_mode() {
    case $MODE in
        auto)
            if has_systemd; then echo systemd
            elif has_openrc; then echo openrc
            else echo supervised
            fi ;;
        systemd) has_systemd || fail "systemd is not running here (for this user)" "use --mode supervised"; echo systemd ;;
        openrc) has_openrc || fail "OpenRC is not available here (it needs root)" "use --mode supervised"; echo openrc ;;
        supervised) echo supervised ;;
        *) fail "unknown --mode $MODE" "use auto, systemd, openrc or supervised" ;;
    esac
}

# The systemd unit, hardened; the agent needs its state directory and the engine socket.
systemd_unit() {
    cat <<EOF
[Unit]
Description=Continuum site agent
Documentation=https://github.com/continuum-fleet/continuum
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=$LAUNCHER --state-dir $STATE launch --agent $AGENT -- run$(engine_arg)
Restart=always
RestartSec=5
RestartPreventExitStatus=3
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ReadWritePaths=$STATE $LIBDIR
RuntimeDirectory=continuum-agent
RuntimeDirectoryMode=0700
RuntimeDirectoryPreserve=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
UMask=0077

[Install]
WantedBy=$([ "$ROOT" = yes ] && echo multi-user.target || echo default.target)
EOF
}

openrc_script() {
    cat <<EOF
#!/sbin/openrc-run
description="Continuum site agent"
command="$LAUNCHER"
command_args="--state-dir $STATE launch --agent $AGENT -- run$(engine_arg)"
supervisor=supervise-daemon
respawn_delay=5
respawn_max=0
depend() { need net; }
EOF
}

# Restarts the launcher if it ever exits, except after a revocation (status 3); for
# hosts without an init system that would.
supervisor_script() {
    cat <<EOF
#!/bin/sh
echo \$\$ > "$STATE/supervisor.pid"
while :; do
    "$LAUNCHER" --state-dir "$STATE" launch --agent "$AGENT" -- run$(engine_arg) >>"$STATE/agent.log" 2>&1 &
    echo \$! > "$STATE/agent.pid"
    status=0
    wait \$! || status=\$?
    [ "\$status" -eq 3 ] && exit 3
    sleep 5
done
EOF
}

# Quotes a value for a generated shell script.
q() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# What the agent runs when its site is decommissioned (`--decommissioned`): it removes
# what this script installed. The agent then exits with status 3, which neither the
# unit, nor OpenRC's supervisor, nor ours restarts. Under systemd and OpenRC the removal
# runs outside the agent's service (`--outside`), which may not write the service
# definition or the binaries, and stops the service.
uninstaller_script() {
    echo '#!/bin/sh'
    echo '# Written by install.sh; run by the agent when the central team decommissions this site.'
    case $1 in
        systemd)
            if [ "$ROOT" = yes ]; then sc=systemctl; run=systemd-run; else sc="systemctl --user"; run="systemd-run --user"; fi
            # shellcheck disable=SC2016 # written as is into the script
            echo 'if [ "${1:-}" = --decommissioned ]; then'
            echo "    exec $run --quiet --collect --no-block sh $(q "$UNINSTALLER") --outside"
            echo 'fi'
            echo "$sc disable --now continuum-agent >/dev/null 2>&1 || true"
            echo "rm -f $(q "$UNIT")"
            echo "$sc daemon-reload >/dev/null 2>&1 || true"
            ;;
        openrc)
            # shellcheck disable=SC2016 # written as is into the script
            echo 'if [ "${1:-}" = --decommissioned ]; then'
            echo "    setsid sh $(q "$UNINSTALLER") --outside </dev/null >/dev/null 2>&1 &"
            echo '    exit 0'
            echo 'fi'
            echo 'sleep 2'
            echo "rc-service continuum-agent stop >/dev/null 2>&1 || true"
            echo "rc-update del continuum-agent default >/dev/null 2>&1 || true"
            echo "rm -f $(q "$OPENRC")"
            ;;
    esac
    echo "rm -f $(q "$BIN") $(q "$SUPERVISOR") $(q "$AGENT") $(q "$LAUNCHER") $(q "$UNINSTALLER")"
    echo "rmdir $(q "$LIBDIR") 2>/dev/null || true"
    echo "rm -rf $(q "$STATE")"
}

engine_arg() {
    [ -n "$ENGINE" ] && printf ' --engine %s' "$ENGINE"
    return 0
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_service() {
    if [ -f "$UNIT" ] && command -v systemctl >/dev/null 2>&1; then
        systemctl_ disable --now continuum-agent >/dev/null 2>&1 || true
    fi
    if [ -f "$OPENRC" ] && command -v rc-service >/dev/null 2>&1; then
        rc-service continuum-agent stop >/dev/null 2>&1 || true
        rc-update del continuum-agent default >/dev/null 2>&1 || true
    fi
    if alive "$STATE/supervisor.pid"; then
        kill "$(cat "$STATE/supervisor.pid")" 2>/dev/null || true
    fi
    if alive "$STATE/agent.pid"; then
        kill "$(cat "$STATE/agent.pid")" 2>/dev/null || true
    fi
    rm -f "$STATE/supervisor.pid" "$STATE/agent.pid"
}

uninstall() {
    stop_service
    if [ -f "$UNIT" ]; then
        rm -f "$UNIT"
        systemctl_ daemon-reload >/dev/null 2>&1 || true
    fi
    rm -f "$OPENRC" "$BIN" "$SUPERVISOR" "$AGENT" "$LAUNCHER" "$UNINSTALLER"
    rmdir "$LIBDIR" 2>/dev/null || true
    rm -rf "$STATE"
    say "removed the agent, its service and its state ($STATE)"
    say "the site stays listed at the control plane until an operator revokes it"
}

if [ "$PRINT_UNIT" = yes ]; then
    systemd_unit
    exit 0
fi
if [ "$PRINT_OPENRC" = yes ]; then
    openrc_script
    exit 0
fi

if [ "$UNINSTALL" = yes ]; then
    uninstall
    exit 0
fi

[ -n "$TOKEN" ] || { usage >&2; fail "no join token given" "create one with \`continuum token create --name SITE\` and paste the line it prints"; }
[ -n "$CONTINUUM_URL" ] || fail "this script does not know its control plane" "download it from the control plane's /install.sh, or set CONTINUUM_URL and CONTINUUM_PIN"

case $(uname -s) in
    Linux) OS=linux ;;
    *) fail "unsupported operating system $(uname -s)" "the agent runs on Linux" ;;
esac
ARCH=${CONTINUUM_INSTALL_ARCH:-$(uname -m)}
case $ARCH in
    amd64) ARCH=x86_64 ;;
    arm64) ARCH=aarch64 ;;
esac

command -v curl >/dev/null 2>&1 || fail "curl is missing" "install curl and run this again"
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is missing" "install coreutils and run this again"

fetch() {
    # fetch PATH OUTPUT: from the control plane, over the same pinned channel.
    if [ -n "$CONTINUUM_PIN" ]; then
        curl -fsSL --retry 3 --connect-timeout 10 -k --pinnedpubkey "$CONTINUUM_PIN" -o "$2" "$CONTINUUM_URL$1"
    else
        curl -fsSL --retry 3 --connect-timeout 10 -o "$2" "$CONTINUUM_URL$1"
    fi
}

WORK=$(mktemp -d)
# Whatever this run created is undone if it fails part way.
CREATED=""
cleanup() {
    status=$?
    rm -rf "$WORK"
    if [ "$status" -ne 0 ] && [ -n "$CREATED" ]; then
        for path in $CREATED; do rm -rf "$path"; done
        say "nothing was left behind"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "downloading the agent for $OS/$ARCH from $CONTINUUM_URL"
fetch "/agent/$OS/$ARCH/sha256" "$WORK/sha256" 2>"$WORK/err" || {
    if grep -q 'returned error: 404' "$WORK/err"; then
        fail "this control plane has no agent for $OS/$ARCH" "ask the central team to publish one for $ARCH (see the README: building other targets)"
    fi
    fail "cannot reach the control plane at $CONTINUUM_URL: $(cat "$WORK/err")" "check the address and that this host may connect to it; a pin mismatch means you are not talking to your control plane"
}
fetch "/agent/$OS/$ARCH" "$WORK/continuum-agent" 2>"$WORK/err" || fail "downloading the agent failed: $(cat "$WORK/err")" "run this again"
WANT=$(cut -c1-64 "$WORK/sha256")
GOT=$(sha256sum "$WORK/continuum-agent" | cut -c1-64)
[ "$WANT" = "$GOT" ] || fail "the downloaded agent's SHA-256 is $GOT, not $WANT" "run this again; if it persists, tell the central team"
chmod 0755 "$WORK/continuum-agent"

# Directories this run creates go again if it fails.
for dir in "$PREFIX/bin" "$LIBDIR" "$(dirname "$STATE")"; do
    [ -d "$dir" ] || CREATED="$CREATED $dir"
done
mkdir -p "$PREFIX/bin" "$LIBDIR"
if [ -f "$AGENT" ] && [ "$(sha256sum "$AGENT" | cut -c1-64)" = "$GOT" ] && [ -f "$LAUNCHER" ] && [ -L "$BIN" ]; then
    say "the agent at $AGENT is current"
    UPGRADED=no
else
    [ -e "$BIN" ] || [ -L "$BIN" ] || CREATED="$CREATED $BIN"
    [ -f "$AGENT" ] || CREATED="$CREATED $AGENT $LAUNCHER"
    for target in "$AGENT" "$LAUNCHER"; do
        cp "$WORK/continuum-agent" "$target.new"
        mv -f "$target.new" "$target"
    done
    # What is installed now is in force: no self-update trial outlives it.
    rm -f "$STATE/upgrade/trial.json" "$STATE/upgrade/previous"
    say "installed $($AGENT --version) at $AGENT"
    UPGRADED=yes
fi

if [ -f "$STATE/identity.json" ]; then
    say "already joined ($STATE); keeping that identity"
else
    [ -d "$STATE" ] || CREATED="$CREATED $STATE"
    if [ -n "$NAME" ]; then
        "$AGENT" --state-dir "$STATE" join "$TOKEN" --name "$NAME" >"$WORK/join" 2>&1 || fail "joining failed: $(cat "$WORK/join")" "ask the central team for a new token if it expired or was used up"
    else
        "$AGENT" --state-dir "$STATE" join "$TOKEN" >"$WORK/join" 2>&1 || fail "joining failed: $(cat "$WORK/join")" "ask the central team for a new token if it expired or was used up"
    fi
    say "$(head -n 1 "$WORK/join")"
fi

if [ -n "$REGISTRIES$CPUS$MEMORY$DISK" ]; then
    {
        echo "# Written by install.sh; the central team never changes this file."
        echo "[admission]"
        if [ -n "$REGISTRIES" ]; then
            printf 'allowed_registries = ['
            sep=""
            for registry in $REGISTRIES; do printf '%s"%s"' "$sep" "$registry"; sep=", "; done
            echo "]"
        fi
        if [ -n "$CPUS$MEMORY$DISK" ]; then
            echo "[budget]"
            [ -z "$CPUS" ] || echo "cpus = $CPUS"
            [ -z "$MEMORY" ] || echo "memory = \"$MEMORY\""
            [ -z "$DISK" ] || echo "disk = \"$DISK\""
        fi
    } >"$WORK/site-policy.toml"
    cp "$WORK/site-policy.toml" "$STATE/site-policy.toml"
    chmod 0600 "$STATE/site-policy.toml"
    say "wrote the site policy $STATE/site-policy.toml"
fi

SERVICE=$(pick_mode)
uninstaller_script "$SERVICE" >"$UNINSTALLER.new"
chmod 0700 "$UNINSTALLER.new"
mv -f "$UNINSTALLER.new" "$UNINSTALLER"
printf '%s\n' "$UNINSTALLER" >"$STATE/installed-by"
chmod 0600 "$STATE/installed-by"
case $SERVICE in
    systemd)
        mkdir -p "$(dirname "$UNIT")"
        systemd_unit >"$UNIT"
        systemctl_ daemon-reload
        systemctl_ enable continuum-agent >/dev/null 2>&1
        systemctl_ restart continuum-agent
        say "running as the systemd service continuum-agent ($UNIT)"
        [ "$ROOT" = yes ] || say "to keep it running after you log out: loginctl enable-linger $(id -un)"
        ;;
    openrc)
        openrc_script >"$OPENRC"
        chmod 0755 "$OPENRC"
        rc-update add continuum-agent default >/dev/null 2>&1
        rc-service continuum-agent restart >/dev/null
        say "running as the OpenRC service continuum-agent"
        ;;
    supervised)
        mkdir -p "$(dirname "$SUPERVISOR")"
        supervisor_script >"$SUPERVISOR.new"
        chmod 0755 "$SUPERVISOR.new"
        if alive "$STATE/supervisor.pid" && ! cmp -s "$SUPERVISOR.new" "$SUPERVISOR"; then
            # Another supervisor script (an older layout): start the new one.
            stop_service
            say "restarting the supervisor with its new script"
        fi
        mv -f "$SUPERVISOR.new" "$SUPERVISOR"
        if alive "$STATE/supervisor.pid"; then
            if [ "$UPGRADED" = yes ] && alive "$STATE/agent.pid"; then
                kill "$(cat "$STATE/agent.pid")" 2>/dev/null || true
                say "restarting the agent on the new binary"
            fi
        else
            nohup "$SUPERVISOR" >/dev/null 2>&1 &
        fi
        say "running under its own supervisor ($SUPERVISOR; no init system to use)"
        ;;
esac

# The command people type: a link to the agent that updates itself.
if [ "$(readlink "$BIN" 2>/dev/null)" != "$AGENT" ]; then
    ln -sf "$AGENT" "$BIN.new"
    mv -f "$BIN.new" "$BIN"
fi

# Success from here on: nothing to undo.
CREATED=""
i=0
while [ $i -lt 30 ]; do
    if "$BIN" --state-dir "$STATE" status -o json 2>/dev/null | grep -q '"state": *"online"'; then
        say "online: $("$BIN" --state-dir "$STATE" status 2>/dev/null | head -n 1)"
        exit 0
    fi
    i=$((i + 1))
    sleep 1
done
say "installed and started, but not online yet; see \`$BIN --state-dir $STATE status\`"
