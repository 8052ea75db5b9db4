# coturn pods (deploy/k8s/coturn.yaml, namespace telemed-turn): the TURN REST secrets and the TLS key pair.
path "secret/data/telemed/turn"     { capabilities = ["read"] }
path "secret/data/telemed/turn-tls" { capabilities = ["read"] }
