#!/bin/sh
# The files behind kube/secure's Secrets: a CA, etcd's member certificate,
# sensorstats's client certificate for etcd, and a bearer token for the API.
#
#   kube/secure/make-secrets.sh [-n NAMESPACE] [-m MEMBERS] [-d DIRECTORY] [-y DAYS]
#
# NAMESPACE is where `kubectl apply -k kube/secure` goes (default: default):
# the members reach each other as etcd-<i>.etcd.<namespace>.svc. MEMBERS is
# the etcd StatefulSet's replicas (3). DIRECTORY defaults to
# kube/secure/secrets, which git ignores. DAYS is how long the certificates
# are valid (365; the CA ten times that). Needs only openssl (OpenSSL 1.1+ or
# LibreSSL).
#
# Writes:
#   ca.crt ca.key          the CA. ca.key signs the certificates and is in no
#                          Secret: keep it safe (offline), it is the cluster's key.
#   member.crt member.key  each etcd member's server and peer certificate, for
#                          every name the members and sensorstats dial
#   client.crt client.key  sensorstats's client certificate (CN sensorstats,
#                          which etcd takes as the user name when RBAC is on)
#   api-tokens             "sensors:<64 hex digits>", one bearer token
#
# Run it again to renew the certificates: an existing CA is kept (so nothing
# else needs it anew) and api-tokens is never overwritten. See
# kube/secure/README.md for rotating the CA and the tokens.
set -eu

namespace=default
members=3
directory=$(dirname "$0")/secrets
days=365
while getopts n:m:d:y: option; do
    case $option in
        n) namespace=$OPTARG ;;
        m) members=$OPTARG ;;
        d) directory=$OPTARG ;;
        y) days=$OPTARG ;;
        *) sed -n '4p' "$0" >&2; exit 2 ;;
    esac
done

umask 077
mkdir -p "$directory"
cd "$directory"
# Never committed, whatever the repository's own .gitignore says.
printf '*\n' > .gitignore

config=openssl.cnf
{
    printf '[req]\ndistinguished_name = name\nprompt = no\n[name]\nCN = unused\n'
    printf '[ca]\nbasicConstraints = critical, CA:TRUE, pathlen:0\n'
    printf 'keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n'
    printf '[member]\nbasicConstraints = critical, CA:FALSE\n'
    printf 'keyUsage = critical, digitalSignature, keyEncipherment\n'
    # Server for clients and peers, and client when it dials its peers.
    printf 'extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = @member_names\n'
    printf '[client]\nbasicConstraints = critical, CA:FALSE\n'
    printf 'keyUsage = critical, digitalSignature, keyEncipherment\n'
    printf 'extendedKeyUsage = clientAuth\n'
    printf '[member_names]\n'
    n=1
    i=0
    while [ "$i" -lt "$members" ]; do
        # etcd-<i>.etcd is what sensorstats dials (SENSORSTATS_ETCD_ENDPOINTS);
        # the longer forms are the members' peer and advertised URLs.
        for name in "etcd-$i.etcd" "etcd-$i.etcd.$namespace" "etcd-$i.etcd.$namespace.svc" \
            "etcd-$i.etcd.$namespace.svc.cluster.local"; do
            printf 'DNS.%d = %s\n' "$n" "$name"
            n=$((n + 1))
        done
        i=$((i + 1))
    done
    for name in etcd-client "etcd-client.$namespace.svc" localhost; do
        printf 'DNS.%d = %s\n' "$n" "$name"
        n=$((n + 1))
    done
    # etcdctl inside a member's pod, and the loopback rehearsal.
    printf 'IP.1 = 127.0.0.1\n'
} > "$config"

key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

serial() {
    printf '0x%s' "$(openssl rand -hex 16)"
}

if [ ! -f ca.key ] || [ ! -f ca.crt ]; then
    key ca.key
    openssl req -x509 -new -key ca.key -subj "/CN=sensorstats etcd CA" -days $((days * 10)) \
        -set_serial "$(serial)" -config "$config" -extensions ca -out ca.crt
    echo "made a new CA: ca.crt, ca.key"
fi

sign() {  # name, subject, extensions section
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -config "$config" -out "$1.csr"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "$(serial)" \
        -days "$days" -extfile "$config" -extensions "$3" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr"
    echo "made $1.crt, $1.key"
}

sign member "/CN=etcd" member
sign client "/CN=sensorstats" client

if [ ! -f api-tokens ]; then
    printf '# One bearer token a line, name:token; see kube/secure/README.md.\n' > api-tokens
    printf 'sensors:%s\n' "$(openssl rand -hex 32)" >> api-tokens
    echo "made api-tokens"
fi
rm -f "$config"
# Readable by the user who runs kubectl; the pods see them through Secrets.
chmod 600 ./*.key api-tokens
chmod 644 ./*.crt
