#!/usr/bin/env bash
# One-shot job of the compose file: a private CA and one PKCS12 keystore per broker (keytool,
# from the apache/kafka image's JRE), in the shared 'certs' volume. Idempotent. Keystore
# password: the admin password (compose secret). Clients trust /certs/ca.crt (PEM).
set -euo pipefail
cd /certs
[[ -s ca.crt ]] && { echo "certs: already there"; exit 0; }
PW=$(tr -d '\n' </run/secrets/admin_password)
kt() { keytool "$@" -storetype PKCS12 -storepass "$PW"; }
kt -genkeypair -alias ca -dname CN=observer-bus-ca -keyalg EC -groupname secp256r1 \
  -ext bc:c -validity 3650 -keystore ca.p12
kt -exportcert -rfc -alias ca -keystore ca.p12 >ca.crt
for broker in $BROKERS; do
  kt -genkeypair -alias "$broker" -dname "CN=$broker" -keyalg EC -groupname secp256r1 \
    -validity 825 -keystore "$broker.p12"
  kt -certreq -alias "$broker" -keystore "$broker.p12" |
    kt -gencert -alias ca -keystore ca.p12 -rfc -validity 825 \
      -ext "SAN=dns:$broker" -ext EKU=serverAuth,clientAuth >"$broker.crt"
  kt -importcert -noprompt -alias ca -file ca.crt -keystore "$broker.p12"
  kt -importcert -noprompt -alias "$broker" -file "$broker.crt" -keystore "$broker.p12"
done
chmod 0644 ca.crt
echo "certs: CA and keystores for $BROKERS"
