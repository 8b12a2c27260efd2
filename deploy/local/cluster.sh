#!/usr/bin/env bash
# A local multi-broker Apache Kafka cluster for observer-bus fault tests: N combined
# broker+controller KRaft nodes (a static N-voter quorum) on 127.0.0.1, each one run by
# deploy/local/kafka.sh (same jars, same start/stop/readiness logic as the single broker).
# Replication factor N (max 3), min.insync.replicas=2; producers use acks=all + idempotence.
# --secure adds TLS (a CA and a broker certificate made once per data dir with the JDK's
# keytool), SASL/SCRAM-SHA-512 principals (admin + one per organization) and KRaft's
# StandardAuthorizer; the ACLs themselves come from bus/acl.py (`obus acls apply`).
# Run `deploy/local/cluster.sh --help` for the commands.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PROG=deploy/local/cluster.sh
KAFKA_SH=$HERE/kafka.sh
DEFAULT_DATA_DIR=$REPO/var/kafka-cluster
DEFAULT_USERS=un,osce,eu,nato,csto,sco
CERT_DAYS=825
# keytool is a short-lived JVM: the client compiler and the serial collector start it faster
KEYTOOL_JVM=(-J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC)
EXIT_USAGE=2
EXIT_NOT_RUNNING=3
EXIT_PORT_IN_USE=4

usage() {
  cat <<EOF
Usage: $PROG COMMAND [OPTIONS]

A local Apache Kafka cluster of N combined broker+controller KRaft nodes on 127.0.0.1, each
node a background JVM started by deploy/local/kafka.sh in DATA_DIR/node-<i>.

Commands:
  fetch       Download the Kafka jars (kafka.sh fetch).
  up          Start every node that does not run (formatting new storage with one shared
              cluster id) and wait until each answers. On an existing data dir it restarts
              the stopped nodes on their recorded ports (how a killed broker comes back).
  down        Stop every node.
  status      Per node: running and answering (exit 0 when all are), else exit 1 or 3.
  pid         Print the pid of node --node I (for fault injection: kill -9, SIGSTOP).
  bootstrap   Print the bootstrap servers (host:port,host:port,...).
  cafile      Print the path of the CA certificate (PEM) clients of a --secure cluster
              verify the brokers with (--ssl-cafile).
  logs        Print the end of node --node I's log.

Options:
  --data-dir D            cluster state (default var/kafka-cluster)          [all]
  --brokers N             number of nodes, 1..9 (default 3)                   [up]
  --ports P1,P2,..        client ports (default 19092,19093,..)               [up]
  --controller-ports ..   controller ports (default 19192,19193,..)           [up]
  --secure                TLS on every listener (SASL_SSL): SASL/SCRAM-SHA-512 for clients
                          and between brokers, SASL/PLAIN on the controller listener,
                          StandardAuthorizer, super user admin; new random passwords in
                          DATA_DIR/secrets/<user>.password (0600); a CA and a broker
                          certificate made once per data dir (see TLS below)   [up]
  --users U1,U2,..        SCRAM principals besides admin (default $DEFAULT_USERS) [up]
  --set KEY=VALUE         extra broker property for every node, repeatable    [up]
  --timeout S             seconds to wait for each node (default 120)         [up]
  --exit-with PID         stop the nodes when process PID ends (tests)        [up]
  --node I                which node (1..N)                        [pid logs status]
  -h, --help              this text

Broker settings (every node): default.replication.factor=min(N,3), min.insync.replicas=2
(1 when N=1), offsets/transaction topics replicated the same way, no unclean leader election,
broker.session.timeout.ms=9000 (the controller fences a silent broker after 9 s).

TLS (--secure): the first 'up' makes, with the JDK's keytool, a CA (EC P-256, valid
$CERT_DAYS days) and one broker certificate it signs (SAN IP:127.0.0.1, DNS:localhost) that
every node presents; the CA's private key is discarded once it has signed. In
DATA_DIR/secrets/: ca.crt (PEM, what clients trust), broker.p12 (PKCS12 key and chain) and
broker-tls.properties (its random password, read by the brokers). Every listener (clients,
inter-broker, controller) is TLS 1.3; clients connect with
  --security-protocol SASL_SSL --ssl-cafile \$($PROG cafile)

Examples:
  $PROG up                                  # 3 nodes on 127.0.0.1:19092-19094
  $PROG up --secure                         # the same over TLS, with SCRAM users and ACLs
  $PROG cafile                              # DATA_DIR/secrets/ca.crt, for --ssl-cafile
  kill -9 \$($PROG pid --node 2); $PROG up  # crash node 2, then bring it back
  $PROG down
EOF
}

say() { printf '%s: %s\n' "cluster.sh" "$*"; }
warn() { printf '%s: %s\n' "cluster.sh" "$*" >&2; }
die() {
  warn "error: $*"
  exit 1
}
usage_error() {
  warn "error: $*"
  warn "see: $PROG --help"
  exit "$EXIT_USAGE"
}

DATA_DIR=
set_data_dir() {
  mkdir -p "${1:-$DEFAULT_DATA_DIR}"
  DATA_DIR=$(cd "${1:-$DEFAULT_DATA_DIR}" && pwd)
}
state() { { sed -n "s/^$1=//p" "$DATA_DIR/cluster.env" 2>/dev/null || true; } | tail -n 1; }
node_dir() { printf '%s/node-%s' "$DATA_DIR" "$1"; }

list() { # "a,b,c" -> array LIST
  IFS=, read -r -a LIST <<<"$1"
}

secret() { # USER: the password file of USER (created with a random password when missing)
  local file=$DATA_DIR/secrets/$1.password
  if [[ ! -s $file ]]; then
    (umask 077 && mkdir -p "$DATA_DIR/secrets" && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  fi
  printf '%s' "$file"
}

write_secure_files() { # USERS...: JAAS settings for the brokers (read via FileConfigProvider)
  # and the readiness probe's login
  local admin_pw user
  admin_pw=$(cat "$(secret admin)")
  for user in "$@"; do
    secret "$user" >/dev/null
  done
  (
    umask 077
    {
      printf 'scram_jaas=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="%s";\n' "$admin_pw"
      printf 'plain_jaas=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="%s" user_admin="%s";\n' "$admin_pw" "$admin_pw"
    } >"$DATA_DIR/secrets/broker-jaas.properties"
    # what kafka_probe.py (kafka.sh's readiness check) connects and logs in with
    printf 'mechanism=SCRAM-SHA-512\nusername=admin\npassword=%s\nssl_cafile=%s\n' \
      "$admin_pw" "$DATA_DIR/secrets/ca.crt" >"$DATA_DIR/secrets/probe.sasl"
  )
}

KEYTOOL=
find_keytool() { # the keytool of the Java that runs Kafka (kafka.sh: JAVA_HOME, else PATH)
  local java
  if [[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME}/bin/keytool ]]; then
    KEYTOOL=$JAVA_HOME/bin/keytool
  elif java=$(command -v java) && [[ -x $(dirname "$(readlink -f "$java")")/keytool ]]; then
    KEYTOOL=$(dirname "$(readlink -f "$java")")/keytool
  else
    KEYTOOL=$(command -v keytool || true)
  fi
  [[ -n $KEYTOOL ]] || die "keytool not found: --secure makes its certificates with the JDK's keytool (part of every Java runtime, e.g. apt-get install openjdk-17-jre-headless; or set JAVA_HOME)"
}

keytool_run() { # ARGS...: keytool, its chatter kept for the error message
  local out
  if ! out=$("$KEYTOOL" "${KEYTOOL_JVM[@]}" "$@" 2>&1 </dev/null); then
    warn "keytool $1 failed:"
    printf '%s\n' "$out" | sed 's/^/  /' >&2
    return 1
  fi
}

tls_complete() { [[ -s $1/ca.crt && -s $1/broker.p12 && -s $1/broker-tls.properties ]]; }

make_tls() { # once per data dir: a CA, a broker key + certificate it signs, the client CA file
  local dir=$DATA_DIR/secrets
  tls_complete "$dir" && return 0
  if command -v flock >/dev/null; then # two 'up' at once: one makes the set, the other waits
    exec 7>"$DATA_DIR/.tls.lock"
    flock 7
    if tls_complete "$dir"; then
      exec 7>&-
      return 0
    fi
  fi
  find_keytool
  local work=$dir/tls.partial old_umask
  old_umask=$(umask)
  umask 077 # keys, keystores and their passwords: readable by this user only
  rm -rf "$work"
  mkdir -p "$work"
  # shellcheck disable=SC2064 # a failed run leaves no CA key behind
  trap "rm -rf '$work'" EXIT
  # passwords travel in files, never on a command line (ps shows those)
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/ca.pass"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/broker.pass"
  local ca=(-keystore "$work/ca.p12" -storetype PKCS12 -storepass:file "$work/ca.pass")
  local broker=(-keystore "$work/broker.p12" -storetype PKCS12 -storepass:file "$work/broker.pass")
  local ec=(-keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA -validity "$CERT_DAYS")
  say "making a CA and a broker certificate with keytool (once per data dir) ..."
  keytool_run -genkeypair -alias ca "${ca[@]}" "${ec[@]}" \
    -dname "CN=observer-bus local cluster CA $(date +%Y%m%d%H%M%S)" \
    -ext bc:c=ca:true,pathlen:0 -ext ku:c=keyCertSign,cRLSign || die "could not make the CA"
  keytool_run -exportcert -rfc -alias ca "${ca[@]}" -file "$work/ca.crt" || die "could not export the CA certificate"
  keytool_run -genkeypair -alias broker "${broker[@]}" "${ec[@]}" -dname "CN=localhost" || die "could not make the broker key"
  keytool_run -certreq -alias broker "${broker[@]}" -file "$work/broker.csr" || die "could not make the broker's certificate request"
  keytool_run -gencert -alias ca "${ca[@]}" -infile "$work/broker.csr" -outfile "$work/broker.crt" \
    -rfc -sigalg SHA256withECDSA -validity "$CERT_DAYS" -ext SAN=IP:127.0.0.1,DNS:localhost \
    -ext bc:c=ca:false -ext ku:c=digitalSignature -ext eku=serverAuth,clientAuth || die "the CA could not sign the broker certificate"
  cat "$work/broker.crt" "$work/ca.crt" >"$work/chain.pem"
  # the signed chain replaces the self-signed certificate of the broker key
  keytool_run -importcert -noprompt -alias broker "${broker[@]}" -file "$work/chain.pem" || die "could not install the broker certificate chain"
  printf 'keystore_password=%s\n' "$(cat "$work/broker.pass")" >"$dir/broker-tls.properties"
  mv -f "$work/broker.p12" "$dir/broker.p12"
  chmod 0644 "$work/ca.crt" # public: what every client trusts
  mv -f "$work/ca.crt" "$dir/ca.crt" # last: its presence says the set is complete
  rm -rf "$work" # with the CA's key: nothing more can be signed by it
  trap - EXIT
  umask "$old_umask"
  exec 7>&-
  say "TLS: CA certificate $dir/ca.crt, broker certificate for IP:127.0.0.1, DNS:localhost (valid $CERT_DAYS days)"
}

cmd_up() {
  local brokers='' ports='' cports='' secure='' users=$DEFAULT_USERS timeout=120 exit_with='' data_dir=''
  local -a extra=()
  while (($#)); do
    case $1 in
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      --brokers) brokers=${2:?--brokers needs a value} && shift 2 ;;
      --ports) ports=${2:?--ports needs a value} && shift 2 ;;
      --controller-ports) cports=${2:?--controller-ports needs a value} && shift 2 ;;
      --secure) secure=1 && shift ;;
      --users) users=${2:?--users needs a value} && shift 2 ;;
      --set) extra+=("${2:?--set needs KEY=VALUE}") && shift 2 ;;
      --timeout) timeout=${2:?--timeout needs a value} && shift 2 ;;
      --exit-with) exit_with=${2:?--exit-with needs a pid} && shift 2 ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "up: unknown option '$1'" ;;
    esac
  done
  set_data_dir "$data_dir"
  if [[ -f $DATA_DIR/cluster.env ]]; then # an existing cluster: same ids, ports and mode
    [[ -z $brokers || $brokers == "$(state BROKERS)" ]] || die "$DATA_DIR holds a $(state BROKERS)-node cluster; remove it to change --brokers"
    brokers=$(state BROKERS)
    ports=$(state PORTS)
    cports=$(state CONTROLLER_PORTS)
    secure=$(state SECURE)
    users=$(state USERS)
  fi
  brokers=${brokers:-3}
  [[ $brokers =~ ^[1-9]$ ]] || usage_error "up: --brokers is 1..9"
  local i
  if [[ -z $ports ]]; then
    ports=$(for ((i = 0; i < brokers; i++)); do printf '%s%s' "$((19092 + i))" "$([[ $i -lt $((brokers - 1)) ]] && echo ,)"; done)
  fi
  if [[ -z $cports ]]; then
    cports=$(for ((i = 0; i < brokers; i++)); do printf '%s%s' "$((19192 + i))" "$([[ $i -lt $((brokers - 1)) ]] && echo ,)"; done)
  fi
  list "$ports"
  local -a port_list=("${LIST[@]}")
  list "$cports"
  local -a cport_list=("${LIST[@]}")
  ((${#port_list[@]} == brokers && ${#cport_list[@]} == brokers)) || usage_error "up: give $brokers --ports and $brokers --controller-ports"

  local cluster_id
  cluster_id=$(state CLUSTER_ID)
  if [[ -z $cluster_id ]]; then
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ $cluster_id != -* ]] || cluster_id=A${cluster_id:1}
  fi
  {
    echo "BROKERS=$brokers"
    echo "PORTS=$ports"
    echo "CONTROLLER_PORTS=$cports"
    echo "CLUSTER_ID=$cluster_id"
    echo "SECURE=$secure"
    echo "USERS=$users"
  } >"$DATA_DIR/cluster.env"

  local rf=$((brokers < 3 ? brokers : 3)) min_isr=$((brokers < 2 ? 1 : 2)) voters=''
  for ((i = 0; i < brokers; i++)); do
    voters+="${voters:+,}$((i + 1))@127.0.0.1:${cport_list[i]}"
  done
  local -a common=(
    --set "controller.quorum.voters=$voters"
    --set "default.replication.factor=$rf"
    --set "min.insync.replicas=$min_isr"
    --set "offsets.topic.replication.factor=$rf"
    --set "transaction.state.log.replication.factor=$rf"
    --set "transaction.state.log.min.isr=$min_isr"
    --set "share.coordinator.state.topic.replication.factor=$rf"
    --set "share.coordinator.state.topic.min.isr=$min_isr"
    --set "unclean.leader.election.enable=false"
    --set "broker.session.timeout.ms=9000"
    --set "broker.heartbeat.interval.ms=1000"
  )
  local -a scram=()
  if [[ -n $secure ]]; then
    list "$users"
    local -a user_list=("${LIST[@]}")
    write_secure_files "${user_list[@]}"
    local user
    for user in admin "${user_list[@]}"; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(cat "$(secret "$user")")]")
    done
    make_tls
    local jaas=$DATA_DIR/secrets/broker-jaas.properties tls=$DATA_DIR/secrets/broker-tls.properties
    common+=(
      # TLS everywhere: clients, replication between brokers and the KRaft quorum
      --set "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL"
      --set "inter.broker.listener.name=SASL_SSL"
      --set "ssl.enabled.protocols=TLSv1.3"
      --set "ssl.protocol=TLSv1.3"
      --set "ssl.keystore.type=PKCS12"
      --set "ssl.keystore.location=$DATA_DIR/secrets/broker.p12"
      --set "ssl.keystore.password=\${file:$tls:keystore_password}"
      --set "ssl.key.password=\${file:$tls:keystore_password}"
      # what a node verifies its peers (brokers, controllers) with: the CA, as a PEM file
      --set "ssl.truststore.type=PEM"
      --set "ssl.truststore.location=$DATA_DIR/secrets/ca.crt"
      --set "sasl.enabled.mechanisms=SCRAM-SHA-512"
      --set "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512"
      --set "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512"
      # SCRAM credentials live in the metadata log, which controllers need before they can
      # read it: the controller listener uses PLAIN with the admin user from the JAAS file.
      --set "listener.name.controller.sasl.enabled.mechanisms=PLAIN"
      --set "sasl.mechanism.controller.protocol=PLAIN"
      --set "config.providers=file"
      --set "config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider"
      --set "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\${file:$jaas:scram_jaas}"
      --set "listener.name.controller.plain.sasl.jaas.config=\${file:$jaas:plain_jaas}"
      --set "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
      --set "super.users=User:admin"
      --set "allow.everyone.if.no.acl.found=false"
    )
    export OBUS_PROBE_SASL_FILE=$DATA_DIR/secrets/probe.sasl
  fi

  local -a extra_args=()
  local kv
  for kv in "${extra[@]}"; do
    extra_args+=(--set "$kv")
  done
  # Every node starts at once: none answers before a quorum of controllers has formed.
  local -a pids=()
  for ((i = 0; i < brokers; i++)); do
    local n=$((i + 1)) dir
    dir=$(node_dir "$n")
    mkdir -p "$dir"
    local -a node=(
      --set "node.id=$n"
    )
    if [[ -n $secure ]]; then
      node+=(
        --set "listeners=SASL_SSL://127.0.0.1:${port_list[i]},CONTROLLER://127.0.0.1:${cport_list[i]}"
        --set "advertised.listeners=SASL_SSL://127.0.0.1:${port_list[i]}"
      )
    fi
    local -a with=()
    [[ -z $exit_with ]] || with=(--exit-with "$exit_with")
    "$KAFKA_SH" up --data-dir "$dir" --port "${port_list[i]}" --controller-port "${cport_list[i]}" \
      --timeout "$timeout" --cluster-id "$cluster_id" "${with[@]}" "${scram[@]}" \
      "${common[@]}" "${node[@]}" "${extra_args[@]}" >"$dir/up.log" 2>&1 &
    pids+=($!)
  done
  local failed=0 port_clash=0 rc
  for ((i = 0; i < brokers; i++)); do
    rc=0
    wait "${pids[i]}" || rc=$?
    if ((rc != 0)); then
      failed=1
      ((rc != EXIT_PORT_IN_USE)) || port_clash=1
      warn "node $((i + 1)) failed to start (exit $rc):"
      sed 's/^/  /' "$(node_dir $((i + 1)))/up.log" >&2
    fi
  done
  if ((failed)); then
    cmd_down --data-dir "$DATA_DIR" >/dev/null 2>&1 || true
    ((port_clash)) && exit "$EXIT_PORT_IN_USE"
    die "the cluster did not start (node logs in $DATA_DIR/node-*/logs)"
  fi
  say "Kafka cluster of $brokers nodes ready: $(bootstrap) (data dir $DATA_DIR${secure:+, SASL_SSL: TLS + SCRAM-SHA-512 + ACL authorizer})"
  [[ -z $secure ]] || say "clients: --security-protocol SASL_SSL --ssl-cafile $DATA_DIR/secrets/ca.crt --sasl-username USER --sasl-password-file $DATA_DIR/secrets/USER.password"
}

bootstrap() {
  list "$(state PORTS)"
  local out='' p
  for p in "${LIST[@]}"; do
    out+="${out:+,}127.0.0.1:$p"
  done
  printf '%s' "$out"
}

require_cluster() {
  set_data_dir "$1"
  [[ -f $DATA_DIR/cluster.env ]] || {
    say "no cluster in $DATA_DIR"
    exit "$EXIT_NOT_RUNNING"
  }
}

node_arg() { # validates --node against the cluster size
  [[ $1 =~ ^[1-9]$ && $1 -le $(state BROKERS) ]] || usage_error "--node must be 1..$(state BROKERS)"
}

cmd_down() {
  local data_dir=''
  while (($#)); do
    case $1 in
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "down: unknown option '$1'" ;;
    esac
  done
  set_data_dir "$data_dir"
  [[ -f $DATA_DIR/cluster.env ]] || {
    say "not running (no cluster in $DATA_DIR)"
    return 0
  }
  local n rc=0 brokers
  brokers=$(state BROKERS)
  local -a pids=()
  for ((n = 1; n <= brokers; n++)); do # in parallel: a lone survivor cannot shut down cleanly
    "$KAFKA_SH" down --data-dir "$(node_dir "$n")" &
    pids+=($!)
  done
  for n in "${pids[@]}"; do
    wait "$n" || rc=1
  done
  return "$rc"
}

cmd_node_query() { # pid | logs | status
  local what=$1 data_dir='' node='' lines=100
  shift
  while (($#)); do
    case $1 in
      --data-dir) data_dir=${2:?--data-dir needs a value} && shift 2 ;;
      --node) node=${2:?--node needs a value} && shift 2 ;;
      -n | --lines) lines=${2:?--lines needs a value} && shift 2 ;;
      -h | --help) usage && exit 0 ;;
      *) usage_error "$what: unknown option '$1'" ;;
    esac
  done
  require_cluster "$data_dir"
  case $what in
    pid)
      node_arg "$node"
      local pid
      pid=$(cat "$(node_dir "$node")/kafka.pid" 2>/dev/null || true)
      [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || {
        say "node $node does not run"
        exit "$EXIT_NOT_RUNNING"
      }
      echo "$pid"
      ;;
    logs)
      node_arg "$node"
      "$KAFKA_SH" logs --data-dir "$(node_dir "$node")" --lines "$lines"
      ;;
    status)
      [[ $(state SECURE) != 1 ]] || export OBUS_PROBE_SASL_FILE=$DATA_DIR/secrets/probe.sasl
      local n rc=0 code
      for ((n = 1; n <= $(state BROKERS); n++)); do
        [[ -z $node || $node == "$n" ]] || continue
        code=0
        "$KAFKA_SH" status --data-dir "$(node_dir "$n")" || code=$?
        ((code == 0)) || rc=$code
      done
      return "$rc"
      ;;
  esac
}

main() {
  (($#)) || {
    usage
    exit "$EXIT_USAGE"
  }
  local cmd=$1
  shift
  case $cmd in
    fetch) "$KAFKA_SH" fetch ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status | pid | logs) cmd_node_query "$cmd" "$@" ;;
    bootstrap)
      local data_dir=''
      [[ ${1:-} != --data-dir ]] || data_dir=${2:?--data-dir needs a value}
      require_cluster "$data_dir"
      bootstrap
      echo
      ;;
    cafile)
      local data_dir=''
      [[ ${1:-} != --data-dir ]] || data_dir=${2:?--data-dir needs a value}
      require_cluster "$data_dir"
      [[ $(state SECURE) == 1 ]] || die "the cluster in $DATA_DIR is not --secure: it speaks PLAINTEXT and has no CA"
      [[ -s $DATA_DIR/secrets/ca.crt ]] || die "no CA certificate yet in $DATA_DIR/secrets (run: $PROG up)"
      echo "$DATA_DIR/secrets/ca.crt"
      ;;
    -h | --help | help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
  esac
}

main "$@"
