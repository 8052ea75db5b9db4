from django.apps import AppConfig


class ClinicConfig(AppConfig):
    name = "clinic"

    def ready(self) -> None:
        from . import errors  # noqa: F401  (its codes join tenancy.errors.every_error_code)
