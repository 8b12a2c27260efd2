#!/usr/bin/env bash
# A local Apache Kafka broker for observer-bus: one KRaft node (broker + controller in one JVM)
# bound to 127.0.0.1 only, run as a plain background process. No Docker, no ZooKeeper.
# Used by `make kafka-up`, `make test` (tests/kafka_broker.py) and `make demo`.
# Run `deploy/local/kafka.sh --help` for the commands.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROG=deploy/local/kafka.sh

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
CACHE_ROOT=${OBUS_KAFKA_CACHE:-$REPO/.cache/kafka}
DEFAULT_DATA_DIR=$REPO/var/kafka
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
READY_LINE='Kafka Server started'
INSTALL_HINT='apt-get install openjdk-17-jre-headless maven'

# Exit statuses besides 0/1: 2 usage, 3 not running (status), 4 port already in use (up).
EXIT_USAGE=2
EXIT_NOT_RUNNING=3
EXIT_PORT_IN_USE=4

usage() {
  cat <<EOF
Usage: $PROG COMMAND [OPTIONS]

A single-node Apache Kafka $KAFKA_VERSION broker (KRaft: broker + controller in one JVM)
listening on 127.0.0.1 only, run as a background process.

Commands:
  fetch     Download the Kafka jars from Maven Central with Maven into
            .cache/kafka/<version>/libs (skipped when already complete).
  up        Start the broker (fetching and formatting storage first if needed) and wait
            until it answers. Does nothing when it already runs.
  down      Stop the broker (SIGTERM, then SIGKILL after ${STOP_TIMEOUT}s) and remove its pid file.
  status    Say whether the broker runs and answers (exit 0), runs but does not answer
            (exit 1) or does not run (exit 3).
  logs      Print the end of the broker log.

Options:
  --data-dir D          state directory: config, KRaft metadata, topic data, logs, pid file
                        (default: var/kafka in the repository)     [up down status logs]
  --port P              client listener PLAINTEXT://127.0.0.1:P (default 9092)        [up]
  --controller-port C   KRaft controller listener CONTROLLER://127.0.0.1:C (default 9093)
                                                                                       [up]
  --timeout S           seconds to wait until the broker answers (default 90)         [up]
  --set KEY=VALUE       extra broker property, repeatable                             [up]
  --exit-with PID       stop the broker when process PID ends (used by the tests)     [up]
  --cluster-id ID       KRaft cluster id to format new storage with (default: random);
                        every node of one cluster needs the same (cluster.sh)         [up]
  --add-scram SPEC      SCRAM credential written at format time, repeatable, e.g.
                        'SCRAM-SHA-512=[name=admin,password=...]' (cluster.sh --secure) [up]
  -f, --follow          keep printing the log as it grows                           [logs]
  -n, --lines N         how many lines to print (default 100)                       [logs]
  -h, --help            this text

Environment:
  OBUS_BOOTSTRAP=HOST:PORT  use a broker you already run: 'up' and 'status' only check that it
                            answers; 'fetch' and 'down' do nothing.
  KAFKA_HOME=DIR            use an installed Kafka distribution (its libs/ jars) instead of
                            downloading.
  KAFKA_VERSION             Kafka version to fetch (default 4.1.1, the tested one).
  KAFKA_HEAP_OPTS           JVM heap options (default: $HEAP_OPTS).
  KAFKA_OPTS                extra JVM options.
  JAVA_HOME                 Java to use (otherwise 'java' on PATH; needs Java 17+).
  OBUS_KAFKA_CACHE          jar cache (default: .cache/kafka in the repository).
  OBUS_KAFKA_CDS=0          do not use a class data sharing archive (see below).

Faster starts: the first broker stopped with 'down' leaves a JVM class data sharing archive
(AppCDS, ~50 MB) next to the jar cache; later starts load it and need ~40% less CPU.

Requirements: Java 17+ to run; Maven for 'fetch'. On Debian/Ubuntu: $INSTALL_HINT

Examples:
  $PROG up                       # 127.0.0.1:9092, state in var/kafka
  $PROG up --port 19092 --controller-port 19093 --data-dir /tmp/k1
  $PROG status --data-dir /tmp/k1 && $PROG down --data-dir /tmp/k1
EOF
}

say() { printf '%s: %s\n' "kafka.sh" "$*"; }
warn() { printf '%s: %s\n' "kafka.sh" "$*" >&2; }
die() {
  warn "error: $*"
  exit 1
}
usage_error() {
  warn "error: $*"
  warn "see: $PROG --help"
  exit "$EXIT_USAGE"
}

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------- tools

JAVA=
require_java() {
  if [[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME}/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
  else
    JAVA=$(command -v java || true)
  fi
  [[ -n $JAVA ]] || die "java not found: Kafka needs Java 17 or newer. Install it with: $INSTALL_HINT (or set JAVA_HOME)"
  local version major
  version=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)
  if [[ $version == 1.* ]]; then
    major=${version#1.}
    major=${major%%.*}
  else
    major=${version%%[.+-]*}
  fi
  [[ $major =~ ^[0-9]+$ ]] || die "cannot tell the version of $JAVA (got '${version}'); Kafka needs Java 17+"
  ((major >= 17)) || die "$JAVA is Java $version; Kafka $KAFKA_VERSION needs Java 17 or newer. Install it with: $INSTALL_HINT (or set JAVA_HOME)"
}

PYTHON=
find_python() {
  if [[ -x $REPO/.venv/bin/python ]]; then
    PYTHON=$REPO/.venv/bin/python
  else
    PYTHON=$(command -v python3 || true)
  fi
}

# probe HOST:PORT [extra kafka_probe.py args...]: does a Kafka broker answer there?
probe() {
  local bootstrap=$1
  shift
  if [[ -n $PYTHON ]]; then
    "$PYTHON" -E -S "$HERE/kafka_probe.py" "$bootstrap" "$@"
  else # no Python at all: a TCP connect is the best we can do
    (exec 3<>"/dev/tcp/${bootstrap%:*}/${bootstrap##*:}") 2>/dev/null
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ----------------------------------------------------------------------------------- jars

LIBS=
VERSION=
cache_dir() { printf '%s/%s' "$CACHE_ROOT" "$KAFKA_VERSION"; }

resolve_libs() { # sets LIBS and VERSION, or fails
  if [[ -n ${KAFKA_HOME:-} ]]; then
    LIBS=$KAFKA_HOME/libs
    local jar
    jar=$(compgen -G "$LIBS/kafka_2.1[0-9]-*.jar" | grep -v -e '-sources' -e '-javadoc' -e '-test' | head -n 1 || true)
    [[ -n $jar ]] || die "KAFKA_HOME=$KAFKA_HOME has no libs/kafka_2.13-<version>.jar; point it at an unpacked Kafka distribution or unset it"
    VERSION=${jar##*/kafka_2.1?-}
    VERSION=${VERSION%.jar}
  else
    LIBS=$(cache_dir)/libs
    VERSION=$KAFKA_VERSION
    [[ -f $(cache_dir)/.complete ]] || return 1
  fi
}

cmd_fetch() {
  if [[ -n ${OBUS_BOOTSTRAP:-} ]]; then
    say "OBUS_BOOTSTRAP=$OBUS_BOOTSTRAP is set: using that broker, nothing to fetch"
    return 0
  fi
  require_java
  if [[ -n ${KAFKA_HOME:-} ]]; then
    resolve_libs
    say "using Kafka $VERSION from KAFKA_HOME=$KAFKA_HOME (nothing to fetch)"
    return 0
  fi
  local dir
  dir=$(cache_dir)
  if [[ -f $dir/.complete ]]; then
    say "Kafka $KAFKA_VERSION already fetched: ${dir#"$REPO"/}/libs"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn (Maven) not found: it downloads the Kafka jars. Install it with: $INSTALL_HINT (or set KAFKA_HOME to an unpacked Kafka distribution)"
  mkdir -p "$dir"
  if command -v flock >/dev/null; then # two fetches at once (make -j, two shells) take turns
    exec 8>"$dir/.lock"
    flock 8
    if [[ -f $dir/.complete ]]; then
      say "Kafka $KAFKA_VERSION already fetched: ${dir#"$REPO"/}/libs"
      return 0
    fi
  fi
  local started tmp log
  started=$(now)
  tmp=$dir/libs.partial.$$
  log=$dir/fetch.log
  rm -rf "$tmp"
  say "fetching Kafka $KAFKA_VERSION jars with Maven (first time only; log: ${log#"$REPO"/}) ..."
  if ! mvn -B -ntp -Dstyle.color=never -f "$HERE/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
    >"$log" 2>&1; then
    tail -n 25 "$log" >&2
    rm -rf "$tmp"
    die "Maven could not fetch Kafka $KAFKA_VERSION (full log: $log). Maven needs access to Maven Central, or a mirror in ~/.m2/settings.xml; or set KAFKA_HOME to an unpacked Kafka distribution"
  fi
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "Maven finished but $tmp has no kafka_2.13-$KAFKA_VERSION.jar (log: $log)"
  rm -rf "$dir/libs"
  mv "$tmp" "$dir/libs"
  local count size
  count=$(find "$dir/libs" -name '*.jar' | wc -l)
  size=$(du -sh "$dir/libs" | cut -f1)
  (cd "$dir/libs" && ls) >"$dir/.complete"
  say "fetched Kafka $KAFKA_VERSION: $count jars, $size in ${dir#"$REPO"/}/libs ($(elapsed "$started")s)"
}

# ---------------------------------------------------------------------------- broker state

DATA_DIR=
set_data_dir() {
  local dir=${1:-$DEFAULT_DATA_DIR}
  mkdir -p "$dir"
  DATA_DIR=$(cd "$dir" && pwd)
}
pid_file() { printf '%s/kafka.pid' "$DATA_DIR"; }

# the value of KEY in DATA_DIR/broker.env (written by up), or empty
state() { sed -n "s/^$1=//p" "$DATA_DIR/broker.env" 2>/dev/null | tail -n 1; }

alive() { # PID is a live (not zombie) process
  kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null || true)
  [[ -n $stat && $stat != Z* ]]
}

# prints the pid of the broker of DATA_DIR when it runs
running_pid() {
  local pid
  pid=$(cat "$(pid_file)" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # guard against pid reuse: it must be our java with our config
  ps -ww -o args= -p "$pid" 2>/dev/null | grep -qF -- "$DATA_DIR/server.properties" || return 1
  printf '%s' "$pid"
}

show_log_tail() {
  local file
  for file in "$DATA_DIR/logs/stdout.log" "$DATA_DIR/logs/server.log"; do
    [[ -s $file ]] || continue
    warn "---- last lines of $file"
    tail -n "${1:-40}" "$file" >&2
  done
}

write_config() { # PORT CONTROLLER_PORT EXTRA...
  local port=$1 cport=$2
  shift 2
  mkdir -p "$DATA_DIR/data" "$DATA_DIR/logs"
  {
    echo "# generated by $PROG up; rewritten at every start"
    echo "process.roles=broker,controller"
    echo "node.id=1"
    # static quorum: the controller address comes from this file on every start, so a data
    # dir formatted once can be restarted on other ports
    echo "controller.quorum.voters=1@127.0.0.1:$cport"
    echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
    echo "controller.listener.names=CONTROLLER"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    echo "log.dirs=$DATA_DIR/data"
    echo "num.partitions=3"
    echo "default.replication.factor=1"
    echo "min.insync.replicas=1"
    echo "auto.create.topics.enable=false"
    echo "offsets.topic.replication.factor=1"
    echo "offsets.topic.num.partitions=10"
    echo "transaction.state.log.replication.factor=1"
    echo "transaction.state.log.min.isr=1"
    echo "transaction.state.log.num.partitions=10"
    echo "share.coordinator.state.topic.replication.factor=1"
    echo "share.coordinator.state.topic.min.isr=1"
    echo "group.initial.rebalance.delay.ms=0"
    echo "num.network.threads=2"
    echo "num.io.threads=4"
    echo "num.recovery.threads.per.data.dir=1"
    local kv
    for kv in "$@"; do
      echo "$kv"
    done
  } >"$DATA_DIR/server.properties"
  cat >"$DATA_DIR/log4j2.properties" <<EOF
# generated by $PROG up
status = warn
# Kafka logs while it shuts down; keep the file appender open until the JVM exits.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $DATA_DIR/logs/server.log
appender.file.filePattern = $DATA_DIR/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

# AppCDS archive for this java + these jars: later starts map the classes instead of loading
# them (~40% less CPU to start). Written by the JVM at exit, promoted by 'down'.
cds_archive() { # .../cds/kafka-<version>-<libs dir key>-<jars and java key>.jsa
  local dir_key build_key
  dir_key=$(printf '%s' "$LIBS" | cksum | cut -d' ' -f1)
  build_key=$({
    "$JAVA" -version 2>&1
    ls -l "$LIBS"
  } | cksum | cut -d' ' -f1)
  printf '%s/cds/kafka-%s-%s-%s.jsa' "$CACHE_ROOT" "$VERSION" "$dir_key" "$build_key"
}

promote_cds() { # after a clean exit: keep the archive the JVM wrote for the next starts
  local target partial=$DATA_DIR/cds.jsa.partial
  target=$(state CDS_PENDING)
  [[ -n $target && -s $partial && ! -e $target ]] || {
    rm -f "$partial"
    return 0
  }
  mkdir -p "${target%/*}"
  if cp "$partial" "$target.tmp.$$" && mv -f "$target.tmp.$$" "$target"; then
    say "saved a class data archive for faster starts: ${target#"$REPO"/}"
    local old # archives of earlier jars or JVMs for this libs dir are dead weight
    for old in "${target%-*}"-*.jsa; do
      [[ $old == "$target" ]] || rm -f "$old"
    done
  else
    rm -f "$target.tmp.$$"
  fi
  rm -f "$partial"
}

new_cluster_id() {
  local id=
  if [[ -n $PYTHON ]]; then
    # what StorageTool random-uuid prints: 16 random bytes, base64url, no padding
    until [[ -n $id && $id != -* ]]; do
      id=$("$PYTHON" -c 'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
    done
  else
    id=$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  fi
  printf '%s' "$id"
}

start_watchdog() { # OWNER_PID BROKER_PID: stop the broker when the owner is gone
  local owner=$1 broker=$2
  # shellcheck disable=SC2016
  "${SETSID[@]}" bash -c '
    owner=$1 broker=$2 grace=$3
    while kill -0 "$owner" 2>/dev/null && kill -0 "$broker" 2>/dev/null; do sleep 1; done
    kill -0 "$broker" 2>/dev/null || exit 0
    kill -TERM "$broker" 2>/dev/null || exit 0
    for ((i = 0; i < grace * 5; i++)); do
      kill -0 "$broker" 2>/dev/null || exit 0
      sleep 0.2
    done
    kill -KILL "$broker" 2>/dev/null || true
  ' kafka-watchdog "$owner" "$broker" "$STOP_TIMEOUT" </dev/null >/dev/null 2>&1 8>&- 9>&- &
}

SETSID=()
command -v setsid >/dev/null && SETSID=(setsid)

cmd_up() {
  local port=9092 cport=9093 port_given='' data_dir='' timeout=90 exit_with='' cluster_id=''
  local -a extra=() format_extra=()
  while (($#)); do
    case $1 in
      --port) port=${2:?--port needs a value} port_given=1 && shift 2 ;;
      --controller-port) cport=${2:?--controller-port needs a value} && shift 2 ;;
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      --timeout) timeout=${2:?--timeout needs a value} && shift 2 ;;
      --set) extra+=("${2:?--set needs KEY=VALUE}") && shift 2 ;;
      --exit-with) exit_with=${2:?--exit-with needs a pid} && shift 2 ;;
      --cluster-id) cluster_id=${2:?--cluster-id needs a value} && shift 2 ;;
      --add-scram) format_extra+=(--add-scram "${2:?--add-scram needs a value}") && shift 2 ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "up: unknown option '$1'" ;;
    esac
  done
  [[ $port =~ ^[0-9]+$ && $cport =~ ^[0-9]+$ && $timeout =~ ^[0-9]+$ ]] || usage_error "up: ports and timeout are numbers"
  [[ $port != "$cport" ]] || usage_error "up: --port and --controller-port must differ"
  [[ -z $exit_with || $exit_with =~ ^[0-9]+$ ]] || usage_error "up: --exit-with needs a pid"
  local kv
  for kv in "${extra[@]}"; do
    [[ $kv == ?*=* ]] || usage_error "up: --set needs KEY=VALUE, got '$kv'"
  done
  find_python

  if [[ -n ${OBUS_BOOTSTRAP:-} ]]; then
    probe "$OBUS_BOOTSTRAP" --wait 15 || die "OBUS_BOOTSTRAP=$OBUS_BOOTSTRAP does not answer; start that broker or unset OBUS_BOOTSTRAP to run a local one"
    say "using the broker at OBUS_BOOTSTRAP=$OBUS_BOOTSTRAP; nothing started"
    return 0
  fi

  set_data_dir "$data_dir"
  if command -v flock >/dev/null; then # two 'up' on one data dir at once: the second one waits
    exec 9>"$DATA_DIR/.lock"
    flock 9
  fi
  local pid
  if pid=$(running_pid); then
    local running_port
    running_port=$(state PORT)
    if [[ -n $port_given && $port != "$running_port" ]]; then
      die "a broker already runs from $DATA_DIR on 127.0.0.1:$running_port (pid $pid), not on $port; stop it first: $PROG down --data-dir $DATA_DIR"
    fi
    say "already running: Kafka $(state VERSION) on 127.0.0.1:$running_port (pid $pid, data dir $DATA_DIR)"
    return 0
  fi
  rm -f "$(pid_file)"

  require_java
  if ! resolve_libs; then
    cmd_fetch
    resolve_libs
  fi
  local p
  for p in "$port" "$cport"; do
    if port_in_use "$p"; then
      warn "error: 127.0.0.1:$p is already in use by another process; pick other ports with --port/--controller-port"
      exit "$EXIT_PORT_IN_USE"
    fi
  done

  write_config "$port" "$cport" "${extra[@]}"
  if [[ ! -f $DATA_DIR/data/meta.properties ]]; then
    [[ -n $cluster_id ]] || cluster_id=$(new_cluster_id)
    if ! "$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool format \
      --cluster-id "$cluster_id" --config "$DATA_DIR/server.properties" "${format_extra[@]}" \
      >"$DATA_DIR/logs/format.log" 2>&1; then
      cat "$DATA_DIR/logs/format.log" >&2
      die "formatting the storage in $DATA_DIR/data failed"
    fi
    say "formatted new KRaft storage in $DATA_DIR/data (cluster id $cluster_id)"
  fi

  local started
  started=$(now)
  if [[ -f $DATA_DIR/logs/server.log ]]; then
    mv -f "$DATA_DIR/logs/server.log" "$DATA_DIR/logs/server.log.prev"
  fi
  : >"$DATA_DIR/logs/stdout.log"
  local -a jvm=()
  read -r -a jvm <<<"$HEAP_OPTS ${KAFKA_OPTS:-}"
  local cds='' cds_pending=''
  rm -f "$DATA_DIR/cds.jsa.partial"
  if [[ ${OBUS_KAFKA_CDS:-1} != 0 ]]; then
    cds=$(cds_archive)
    if [[ -s $cds ]]; then
      jvm+=("-XX:SharedArchiveFile=$cds")
    else
      jvm+=("-XX:ArchiveClassesAtExit=$DATA_DIR/cds.jsa.partial")
      cds_pending=$cds
    fi
  fi
  jvm+=(
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$DATA_DIR/log4j2.properties"
    "-Dkafka.logs.dir=$DATA_DIR/logs"
  )
  # own session (no terminal signals), no inherited stdio (callers capturing our output
  # must not wait for the broker to close it)
  "${SETSID[@]}" "$JAVA" "${jvm[@]}" -cp "$LIBS/*" kafka.Kafka "$DATA_DIR/server.properties" \
    </dev/null >>"$DATA_DIR/logs/stdout.log" 2>&1 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$(pid_file)"
  {
    echo "PORT=$port"
    echo "CONTROLLER_PORT=$cport"
    echo "VERSION=$VERSION"
    echo "LIBS=$LIBS"
    echo "CDS_PENDING=$cds_pending"
  } >"$DATA_DIR/broker.env"
  if [[ -n $exit_with ]]; then
    start_watchdog "$exit_with" "$pid"
  fi
  # interrupted while waiting (Ctrl-C): do not leave a half-started broker behind
  # shellcheck disable=SC2064
  trap "trap - INT TERM; warn 'interrupted: stopping the broker'; stop_pid $pid || true; rm -f '$(pid_file)'; exit 130" INT TERM

  local deadline=$((SECONDS + timeout))
  while :; do
    if ! alive "$pid"; then
      wait "$pid" 2>/dev/null || true
      rm -f "$(pid_file)"
      show_log_tail 40
      if grep -qs -e 'Address already in use' -e 'BindException' "$DATA_DIR/logs/server.log" "$DATA_DIR/logs/stdout.log"; then
        warn "error: Kafka could not bind 127.0.0.1:$port or :$cport (in use); pick other ports"
        exit "$EXIT_PORT_IN_USE"
      fi
      die "Kafka exited during startup (logs in $DATA_DIR/logs)"
    fi
    if [[ -n $PYTHON ]]; then # a Metadata answer listing the broker: it serves clients
      if port_in_use "$port" && probe "127.0.0.1:$port" --quiet --timeout 2 2>/dev/null; then
        break
      fi
    elif grep -qsF "$READY_LINE" "$DATA_DIR/logs/server.log" && probe "127.0.0.1:$port"; then
      break
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail 40
      warn "Kafka did not answer on 127.0.0.1:$port within ${timeout}s; stopping it"
      stop_pid "$pid" || true
      die "Kafka did not become ready (logs in $DATA_DIR/logs)"
    fi
    sleep 0.2
  done
  trap - INT TERM
  say "Kafka $VERSION ready on 127.0.0.1:$port in $(elapsed "$started")s (pid $pid, data dir $DATA_DIR)"
  local dd_arg=
  if [[ $DATA_DIR != "$DEFAULT_DATA_DIR" ]]; then
    dd_arg=" --data-dir $DATA_DIR"
  fi
  say "logs: $PROG logs$dd_arg; stop: $PROG down$dd_arg"
}

KILLED=
stop_pid() { # PID: SIGTERM, wait STOP_TIMEOUT, SIGKILL (then sets KILLED)
  local pid=$1 i
  KILLED=
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    alive "$pid" || return 0
    sleep 0.2
  done
  warn "pid $pid still runs ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
  KILLED=1
  kill -KILL "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.2
  done
  return 1
}

cmd_down() {
  local data_dir=
  while (($#)); do
    case $1 in
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "down: unknown option '$1'" ;;
    esac
  done
  if [[ -n ${OBUS_BOOTSTRAP:-} && -z $data_dir ]]; then
    say "OBUS_BOOTSTRAP=$OBUS_BOOTSTRAP is set: that broker is not managed here; nothing to stop"
    return 0
  fi
  if [[ -n $data_dir && ! -d $data_dir ]]; then
    say "not running (no data dir $data_dir)"
    return 0
  fi
  set_data_dir "$data_dir"
  local pid started
  if ! pid=$(running_pid); then
    rm -f "$(pid_file)"
    say "not running (data dir $DATA_DIR)"
    return 0
  fi
  started=$(now)
  stop_pid "$pid" || die "could not stop pid $pid"
  rm -f "$(pid_file)"
  say "stopped Kafka (pid $pid) in $(elapsed "$started")s"
  if [[ -z $KILLED ]]; then
    promote_cds
  fi
}

cmd_status() {
  local data_dir=
  while (($#)); do
    case $1 in
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "status: unknown option '$1'" ;;
    esac
  done
  find_python
  if [[ -n ${OBUS_BOOTSTRAP:-} && -z $data_dir ]]; then
    if probe "$OBUS_BOOTSTRAP"; then
      return 0
    fi
    return 1
  fi
  if [[ -n $data_dir && ! -d $data_dir ]]; then
    say "not running (no data dir $data_dir)"
    return "$EXIT_NOT_RUNNING"
  fi
  set_data_dir "$data_dir"
  local pid port
  if ! pid=$(running_pid); then
    say "not running (data dir $DATA_DIR)"
    return "$EXIT_NOT_RUNNING"
  fi
  port=$(state PORT)
  say "running: Kafka $(state VERSION) pid $pid on 127.0.0.1:$port (data dir $DATA_DIR)"
  probe "127.0.0.1:$port" || return 1
}

cmd_logs() {
  local data_dir='' lines=100 follow=''
  while (($#)); do
    case $1 in
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      -n | --lines) lines=${2:?--lines needs a value} && shift 2 ;;
      -f | --follow) follow=1 && shift ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "logs: unknown option '$1'" ;;
    esac
  done
  [[ $lines =~ ^[0-9]+$ ]] || usage_error "logs: --lines needs a number"
  set_data_dir "$data_dir"
  local log=$DATA_DIR/logs/server.log
  [[ -f $log ]] || die "no log yet: $log (has the broker been started with this --data-dir?)"
  if [[ -n $follow ]]; then
    exec tail -n "$lines" -F "$log"
  fi
  tail -n "$lines" "$log"
}

main() {
  (($#)) || {
    usage
    exit "$EXIT_USAGE"
  }
  local cmd=$1
  shift
  case $cmd in
    fetch)
      case ${1:-} in
        '') cmd_fetch ;;
        -h | --help) usage ;;
        *) usage_error "fetch takes no options" ;;
      esac
      ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    -h | --help | help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
