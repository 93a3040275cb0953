#!/bin/sh
# Make a private CA and a broker certificate for MQTT over TLS (compose stack and tests).
# Usage: make-certs.sh DIR [SERVER_NAME...]; does nothing if DIR/ca.crt exists.
set -eu
dir=${1:?usage: make-certs.sh DIR [NAME...]}; shift
[ -f "$dir/ca.crt" ] && exit 0
mkdir -p "$dir"
names=${*:-mosquitto localhost}
san=$(for n in $names; do printf 'DNS:%s,' "$n"; done)IP:127.0.0.1
openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=vitalgate-ca" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=${names%% *}" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf 'subjectAltName=%s\n' "$san" > "$dir/ext.cnf"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 825 -extfile "$dir/ext.cnf" -out "$dir/server.crt" 2>/dev/null
chmod 644 "$dir"/*.crt "$dir/server.key"
rm -f "$dir/server.csr" "$dir/ext.cnf"
