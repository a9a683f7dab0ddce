# Shared set-up for scripts/run, scripts/test and scripts/bench: installs and starts what the
# daemon and its tests need, only where it is missing. Sourced, not run.

export PATH="$HOME/.cargo/bin:$PATH"

# Bold on a terminal only: a log file or CI gets no escape codes.
say() { if [ -t 2 ]; then printf '\033[1m==> %s\033[0m\n' "$*" >&2; else printf '==> %s\n' "$*" >&2; fi; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    say "installing $* (Debian packages)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# C libraries and tools the build links or runs: OpenSSL (the libpq built into the binary), a C
# toolchain (libpq, librdkafka).
ensure_build_deps() {
    local missing=()
    [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v cc >/dev/null || missing+=(build-essential)
    command -v make >/dev/null || missing+=(make)
    command -v pg_isready >/dev/null || missing+=(postgresql-client)
    [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# Postgres on 127.0.0.1:5432 with trust auth for local TCP connections (the tests and the local
# run connect as user postgres without a password): install it where it is missing, set
# pg_hba.conf to trust 127.0.0.1 and ::1 (said when changed), and start it where it is stopped.
ensure_postgres() {
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
    local v; v=$(ls /etc/postgresql | sort -V | tail -n1)
    local hba="/etc/postgresql/$v/main/pg_hba.conf"
    if grep -Eq '^host\s+all\s+all\s+(127.0.0.1/32|::1/128)\s+(md5|scram-sha-256|password)' "$hba"; then
        say "setting $hba to trust local TCP connections (127.0.0.1, ::1) without a password"
        as_root sed -i -E 's/^(host\s+all\s+all\s+(127.0.0.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
        if pg_isready -q -h 127.0.0.1 -p 5432; then as_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload; fi
    fi
    if pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
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

# Java 17 (the JDK: the OpenSearch launcher is compiled here) and Maven, from Debian's packages,
# where either is missing.
ensure_java() {
    local missing=()
    command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null || missing+=(maven)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# Apache Kafka's broker: the version named in scripts/kafka/pom.xml, its runtime classpath copied
# from Maven Central into .kafka/<version>/libs once. scripts/kafka/broker runs it.
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
export KAFKA_LIBS="${KAFKA_LIBS:-$PWD/.kafka/$KAFKA_VERSION/libs}"
ensure_kafka() {
    ensure_java
    if [ -e "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then return; fi
    say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIBS (once)"
    local tmp="$KAFKA_LIBS.tmp"
    rm -rf "$tmp"
    mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp"
    mv "$tmp" "$KAFKA_LIBS"
}

# OpenSearch (Elasticsearch's API), the search engine the tests index the daemon's log lines into:
# the version named in scripts/opensearch/pom.xml, its runtime classpath copied from Maven Central
# into .opensearch/<version>/libs and its launcher compiled into .../classes, once.
# scripts/opensearch/node runs it.
OPENSEARCH_VERSION=$(sed -n 's:.*<opensearch.version>\(.*\)</opensearch.version>.*:\1:p' scripts/opensearch/pom.xml)
export OPENSEARCH_HOME="${OPENSEARCH_HOME:-$PWD/.opensearch/$OPENSEARCH_VERSION}"
ensure_opensearch() {
    ensure_java
    if [ -e "$OPENSEARCH_HOME/libs/opensearch-$OPENSEARCH_VERSION.jar" ] && [ -e "$OPENSEARCH_HOME/classes/Launcher.class" ]; then return; fi
    say "fetching OpenSearch $OPENSEARCH_VERSION from Maven Central into $OPENSEARCH_HOME (once)"
    local tmp="$OPENSEARCH_HOME.tmp"
    rm -rf "$tmp"
    mvn -q -B -f scripts/opensearch/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs"
    javac -nowarn -cp "$tmp/libs/*" -d "$tmp/classes" scripts/opensearch/Launcher.java
    rm -rf "$OPENSEARCH_HOME"
    mv "$tmp" "$OPENSEARCH_HOME"
}

# Waits until a broker listens on 127.0.0.1:$1 and its log ($2) says it started.
wait_for_kafka() {
    local port="$1" log="$2"
    for _ in $(seq 1 600); do
        if grep -q "Kafka Server started" "$log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "Kafka did not start on 127.0.0.1:$port within 60 s; its log: $log" >&2
    return 1
}
