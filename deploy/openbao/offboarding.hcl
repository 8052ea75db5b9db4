# Policy for crypto-shredding an organization that leaves the platform (shred_org). Held by few people;
# every use shows in Vault's audit device.
path "transit/keys/org-*"        { capabilities = ["read", "delete"] }
path "transit/keys/org-*/config" { capabilities = ["update"] }
path "auth/token/lookup-self"    { capabilities = ["read"] }
