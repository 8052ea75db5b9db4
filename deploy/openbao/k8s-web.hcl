# telemed-web pods (deploy/k8s/web.yaml): the Vault Agent injector renders these into web.env at start.
# Read-only, and only what the web tier needs: not the audit writer, not any owner credential.
path "secret/data/telemed/app"          { capabilities = ["read"] }
path "secret/data/telemed/database"     { capabilities = ["read"] }
path "secret/data/telemed/audit-reader" { capabilities = ["read"] }
path "secret/data/telemed/redis"        { capabilities = ["read"] }
path "secret/data/telemed/turn"         { capabilities = ["read"] }
