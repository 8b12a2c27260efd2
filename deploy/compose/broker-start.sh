#!/usr/bin/env bash
# Entry point of a compose broker (apache/kafka image): a combined broker+controller KRaft node.
# SASL_SSL everywhere: clients and brokers use SCRAM-SHA-512 on CLIENT; the controller quorum
# uses PLAIN (admin only) on CONTROLLER, because SCRAM credentials live in the metadata log the
# controllers serve. SCRAM credentials of admin and every organization are written at format
# time (kafka-storage format --add-scram), passwords from the compose secrets. ACLs are applied
# by the init service (nodes/demo/manifests.py generates its one-line-per-rule script).
set -euo pipefail
pw() { tr -d '\n' <"/run/secrets/$1_password"; }
ADMIN_PW=$(pw admin)
HOST=$(hostname)
CONF=/etc/obus/server.properties
mkdir -p /etc/obus /var/lib/kafka/data
umask 077
cat >"$CONF" <<PROPS
process.roles=broker,controller
node.id=${NODE_ID}
controller.quorum.voters=${CONTROLLER_QUORUM_VOTERS}
listeners=CLIENT://0.0.0.0:${CLIENT_PORT},CONTROLLER://0.0.0.0:${CONTROLLER_PORT}
advertised.listeners=CLIENT://${HOST}:${CLIENT_PORT}
listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SASL_SSL
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${ADMIN_PW}";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="${ADMIN_PW}" user_admin="${ADMIN_PW}";
ssl.keystore.type=PKCS12
ssl.keystore.location=/certs/${HOST}.p12
ssl.keystore.password=${ADMIN_PW}
ssl.key.password=${ADMIN_PW}
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
ssl.endpoint.identification.algorithm=https
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
log.dirs=/var/lib/kafka/data
broker.session.timeout.ms=9000
${BROKER_SETTINGS}
PROPS
cat >/etc/obus/admin.properties <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${ADMIN_PW}";
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
PROPS
if [[ ! -f /var/lib/kafka/data/meta.properties ]]; then
  scram=()
  IFS=, read -r -a users <<<"$SCRAM_USERS"
  for user in "${users[@]}"; do
    scram+=(--add-scram "SCRAM-SHA-512=[name=${user},password=$(pw "$user")]")
  done
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "$CLUSTER_ID" --config "$CONF" "${scram[@]}"
fi
exec /opt/kafka/bin/kafka-server-start.sh "$CONF"
