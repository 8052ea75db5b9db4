"""Tenancy: organizations, memberships, sign-in and the tenant context enforced by PostgreSQL.

The bottom of the dependency graph: clinic, audit and video import tenancy; tenancy imports none of them
(an import-linter contract in pyproject.toml keeps it so).

Other apps build on these public modules only, each thing from one of them:

- `tenancy.api`: an app's HTTP API: `TenantAPIView`, `PURPOSE_HEADER`, `paginated` and `cursor_page`,
  `uuid_param` (the one UUID query-parameter parser), `request_org`, `request_user`, `StrictSerializer`,
  `StrictModelSerializer`.
- `tenancy.sockets`: an app's WebSocket consumers: `member_for_socket` and `socket_sign_in` (who is signed in
  on a handshake, and with what), `credential_in_force` (whether that sign-in still holds, for an open socket).
- `tenancy.commands`: an app's management commands: `organization_by_slug`.
- `tenancy.models`: `Organization`, `Membership`, `User`, `Role`, `PurposeOfUse`, `TenantModel` (the base of
  every tenant table).
- `tenancy.context`: `tenant_context`, `platform_context`, `current`, `ANONYMOUS`: the per-transaction
  context PostgreSQL's row-level security reads.
- `tenancy.errors`: `ApiError`, `ServiceUnavailable`, `json_error`: the error body every client receives;
  `ErrorCode` (an app's codes subclass it in its own errors module), `SocketErrorCode`, `TenancyCode` (the
  general codes every app answers with) and `every_error_code`.
- `tenancy.permissions`: `HasRole` and the role permissions.
- `tenancy.events`: the event bus that audit subscribes to and the apps publish on.
- `tenancy.services`: organizations and members (`create_organization`, `ensure_member`,
  `get_organization`).
- `tenancy.crypto.fields` (encrypted model fields, `index_token`) and `tenancy.crypto.vault` (the Vault
  Transit client, `KeyServiceError`).
- `tenancy.health`: `register_check`, `register_gauge` for an app's readiness checks and metrics.
- `tenancy.rls`: `EnableTenantRLS` and the policy SQL, for an app's migrations.

Everything else (authentication, middleware, views, serializers, schema, strict, sessions, routers, urls,
management, crypto's envelope, keyring and operations) is tenancy's own; config wires some of it into the
settings and URLs, and a second import-linter contract keeps the other apps off it.
"""
