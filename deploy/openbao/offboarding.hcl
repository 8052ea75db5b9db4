# Policy for crypto-shredding an organization that leaves the platform (shred_org). Held by few people;
# every use shows in Vault's audit device. (Policy globs match only at the end of a path, so the config
# endpoint is granted with the `+` single-segment wildcard.)
path "transit/keys/org-*"     { capabilities = ["read", "delete"] }
path "transit/keys/+/config"  { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
