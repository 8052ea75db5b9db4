"""Per-organization envelope encryption of health information, with keys from Vault (OpenBao) Transit."""
