# Shared set-up for scripts/run, scripts/test and scripts/bench: installs and starts what the
# daemon and its tests need, only where it is missing. Sourced, not run.

export PATH="$HOME/.cargo/bin:$PATH"
TANSU_VERSION=0.6.0

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    say "installing $* (Debian packages)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# C libraries and tools the build links or runs: libpq (diesel), a C toolchain (librdkafka).
ensure_build_deps() {
    local missing=()
    [ -e /usr/include/postgresql/libpq-fe.h ] || missing+=(libpq-dev)
    command -v cc >/dev/null || missing+=(build-essential)
    command -v make >/dev/null || missing+=(make)
    command -v pg_isready >/dev/null || missing+=(postgresql-client)
    [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# Postgres on 127.0.0.1:5432 with trust auth for user postgres: start it where it is installed
# but stopped; install it where it is missing.
ensure_postgres() {
    if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
        local v; v=$(ls /etc/postgresql | sort -V | tail -n1)
        sed -i -E 's/^(host\s+all\s+all\s+(127.0.0.1\/32|::1\/128)\s+)\S+/\1trust/' "/etc/postgresql/$v/main/pg_hba.conf"
    fi
    local v; v=$(ls /etc/postgresql | sort -V | tail -n1)
    say "starting Postgres $v"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 0.5; done
    echo "Postgres did not come up on 127.0.0.1:5432" >&2
    return 1
}

# Headless Chromium and its WebDriver, for the status page's browser test.
ensure_chromium() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return; fi
    apt_install chromium chromium-driver
}

# tansu, the Kafka-compatible broker the tests and the local run use (about 15 minutes to build once).
ensure_tansu() {
    if command -v tansu >/dev/null && cargo install --list | grep -q "^tansu v$TANSU_VERSION:"; then return; fi
    say "installing tansu $TANSU_VERSION (a Kafka-compatible broker; takes about 15 minutes the first time)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
}
