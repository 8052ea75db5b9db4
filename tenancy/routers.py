"""Migrations run only as the owner role; the server's runtime role never changes the schema."""


class OwnerOnlyMigrates:
    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == "owner"
