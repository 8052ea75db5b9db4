# Policy for the application server (web workers, consumers, shipper).
# It may use each organization's Transit key, never manage one: no create, configure, rotate or delete.
# Without "create" on transit/encrypt, encrypting to a deleted key cannot recreate it (and the mount has
# disable_upsert=true as a second guard).
path "transit/decrypt/org-*"           { capabilities = ["update"] }
path "transit/datakey/plaintext/org-*" { capabilities = ["update"] }
# Only benchmarks compare against per-field Transit encryption; the server never calls it.
path "transit/encrypt/org-*"           { capabilities = ["update"] }

# The audit log's checkpoint signer: sign with it and read its public keys, nothing else.
path "transit/sign/audit-signer"       { capabilities = ["update"] }
path "transit/keys/audit-signer"       { capabilities = ["read"] }

# Keep its own token alive.
path "auth/token/renew-self"  { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
