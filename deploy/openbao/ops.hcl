# Policy for key provisioning and rotation (create_org, rotate_org_key), run by an operator or a job,
# never by the web tier.
path "transit/keys/org-*"        { capabilities = ["create", "read", "update"] }
path "transit/keys/org-*/rotate" { capabilities = ["update"] }
path "transit/keys/org-*/config" { capabilities = ["update"] }
path "transit/rewrap/org-*"      { capabilities = ["update"] }
path "auth/token/lookup-self"    { capabilities = ["read"] }
