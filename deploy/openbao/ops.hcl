# Policy for key provisioning and rotation (create_org, rotate_org_key, audit key rotation), run by an
# operator or a job, never by the web tier. (Globs match only at the end of a path: `transit/keys/org-*`
# also covers each key's /rotate and /config.)
path "transit/keys/org-*"          { capabilities = ["create", "read", "update"] }
path "transit/rewrap/org-*"        { capabilities = ["update"] }
path "transit/keys/audit-signer"   { capabilities = ["create", "read", "update"] }
path "transit/keys/audit-signer/*" { capabilities = ["update"] }
path "auth/token/lookup-self"      { capabilities = ["read"] }
