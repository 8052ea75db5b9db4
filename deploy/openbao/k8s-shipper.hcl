# telemed-audit-shipper pods (deploy/k8s/audit-shipper.yaml): the only workload given the audit writer.
path "secret/data/telemed/app"          { capabilities = ["read"] }
path "secret/data/telemed/database"     { capabilities = ["read"] }
path "secret/data/telemed/audit-writer" { capabilities = ["read"] }
path "secret/data/telemed/audit-reader" { capabilities = ["read"] }
