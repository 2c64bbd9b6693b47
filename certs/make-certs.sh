#!/usr/bin/env bash
# Makes pullgate's serving certificate without cert-manager: a CA of its own and a certificate
# for the Service pullgate.<namespace>.svc signed by it. With --apply, also stores them in the
# Secret the Deployment mounts and puts the CA in the webhook's caBundle (needs kubectl and a
# cluster where `kubectl apply -k deploy/` has been run).
#
#   certs/make-certs.sh --apply                 # make (or renew) and install
#   certs/make-certs.sh --out /tmp/pullgate     # only write the files
#
# Files written to the output directory (default certs/out/, which git ignores):
#   ca.crt, ca.key    the CA: 5 years. Kept and reused when the directory already has one, so a
#                     renewal changes only the serving certificate; --new-ca makes a new one.
#   tls.crt, tls.key  the serving certificate: 1 year, always made anew. CN pullgate.<ns>.svc;
#                     SANs pullgate, pullgate.<ns>, pullgate.<ns>.svc,
#                     pullgate.<ns>.svc.cluster.local; serverAuth only.
# Keys are ECDSA P-256, PKCS#8, readable by their owner only. Keep ca.key somewhere safe (or
# delete it and make a new CA at the next renewal): whoever has it can impersonate the webhook.
#
# To renew before tls.crt expires (`openssl x509 -enddate -noout -in certs/out/tls.crt`), run
# the same command again: pullgate re-reads the Secret when the kubelet updates it.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: certs/make-certs.sh [--namespace NS] [--service NAME] [--secret NAME] [--webhook NAME]
                           [--out DIR] [--days N] [--ca-days N] [--new-ca] [--apply]

  --namespace NS   namespace of the Service and the Secret (default: pullgate)
  --service NAME   name of the Service the apiserver calls (default: pullgate)
  --secret NAME    TLS Secret the Deployment mounts (default: pullgate-tls)
  --webhook NAME   ValidatingWebhookConfiguration whose caBundle is set (default: pullgate)
  --out DIR        where the files are written (default: certs/out)
  --days N         lifetime of the serving certificate in days (default: 365)
  --ca-days N      lifetime of a new CA in days (default: 1825)
  --new-ca         make a new CA even when DIR has one
  --apply          create or update the Secret and patch the webhook's caBundle with kubectl
                   ($KUBECTL, default kubectl; the current context is used)
USAGE
}

namespace=pullgate
service=pullgate
secret=pullgate-tls
webhook=pullgate
out="$(cd "$(dirname "$0")" && pwd)/out"
days=365
ca_days=1825
new_ca=false
apply=false
kubectl="${KUBECTL:-kubectl}"

while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) namespace="${2:?--namespace needs a value}"; shift 2 ;;
    --service) service="${2:?--service needs a value}"; shift 2 ;;
    --secret) secret="${2:?--secret needs a value}"; shift 2 ;;
    --webhook) webhook="${2:?--webhook needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --days) days="${2:?--days needs a value}"; shift 2 ;;
    --ca-days) ca_days="${2:?--ca-days needs a value}"; shift 2 ;;
    --new-ca) new_ca=true; shift ;;
    --apply) apply=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "make-certs.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

for n in "$days" "$ca_days"; do
  case "$n" in
    '' | *[!0-9]* | 0) echo "make-certs.sh: --days and --ca-days take a positive number" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is needed" >&2; exit 1; }
if $apply; then
  command -v "$kubectl" >/dev/null || { echo "make-certs.sh: --apply needs $kubectl" >&2; exit 1; }
fi

host="$service.$namespace.svc"
umask 077
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The CA: kept when there is one, so that caBundle stays valid across renewals.
if $new_ca || [ ! -s "$out/ca.crt" ] || [ ! -s "$out/ca.key" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$work/ca.key" -sha256 -days "$ca_days" \
    -subj "/CN=pullgate-ca ($namespace)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/ca.crt"
  mv "$work/ca.key" "$out/ca.key"
  mv "$work/ca.crt" "$out/ca.crt"
  echo "make-certs.sh: new CA in $out/ca.crt (valid $ca_days days)" >&2
else
  echo "make-certs.sh: reusing the CA in $out/ca.crt" >&2
fi

# The serving certificate, signed by the CA.
cat >"$work/leaf.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:$service, DNS:$service.$namespace, DNS:$host, DNS:$host.cluster.local
EOF
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/tls.key" 2>/dev/null
openssl req -new -key "$work/tls.key" -subj "/CN=$host" -out "$work/tls.csr"
openssl x509 -req -in "$work/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -sha256 -days "$days" \
  -extfile "$work/leaf.ext" -out "$work/tls.crt" 2>/dev/null
openssl verify -CAfile "$out/ca.crt" "$work/tls.crt" >/dev/null
mv "$work/tls.key" "$out/tls.key"
mv "$work/tls.crt" "$out/tls.crt"
chmod 0644 "$out/ca.crt" "$out/tls.crt"
echo "make-certs.sh: serving certificate for $host in $out/tls.crt (valid $days days)" >&2

if ! $apply; then
  cat >&2 <<EOF
make-certs.sh: files written, cluster not touched. To install them:
  $kubectl -n $namespace create secret generic $secret --type=kubernetes.io/tls \\
    --from-file=tls.crt=$out/tls.crt --from-file=tls.key=$out/tls.key \\
    --from-file=ca.crt=$out/ca.crt --dry-run=client -o yaml | $kubectl apply -f -
  and set caBundle of every webhook of validatingwebhookconfiguration/$webhook to
  base64 -w0 $out/ca.crt  (or run this script again with --apply)
EOF
  exit 0
fi

# The Secret, created or updated in place (the kubelet then updates the mounted files and
# pullgate reloads them).
"$kubectl" -n "$namespace" create secret generic "$secret" --type=kubernetes.io/tls \
  --from-file=tls.crt="$out/tls.crt" --from-file=tls.key="$out/tls.key" \
  --from-file=ca.crt="$out/ca.crt" --dry-run=client -o yaml |
  "$kubectl" apply -f -

# caBundle of every webhook in the configuration.
count="$("$kubectl" get validatingwebhookconfiguration "$webhook" -o jsonpath='{range .webhooks[*]}x{end}')"
if [ -z "$count" ]; then
  echo "make-certs.sh: validatingwebhookconfiguration/$webhook has no webhooks (apply deploy/ first)" >&2
  exit 1
fi
bundle="$(openssl base64 -A -in "$out/ca.crt")"
patch="["
for ((i = 0; i < ${#count}; i++)); do
  [ "$i" -eq 0 ] || patch+=","
  patch+="{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}"
done
patch+="]"
"$kubectl" patch validatingwebhookconfiguration "$webhook" --type=json -p "$patch"
echo "make-certs.sh: Secret $namespace/$secret and the caBundle of validatingwebhookconfiguration/$webhook are set" >&2
