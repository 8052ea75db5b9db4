from django.apps import AppConfig


class VideoConfig(AppConfig):
    name = "video"

    def ready(self) -> None:
        from tenancy import health

        from . import errors, liveness  # noqa: F401  (errors: its codes join tenancy.errors.every_error_code)

        # Messages this process delivered only through the catch-up (a lost flush notice); grows, never resets.
        health.register_gauge("video_catch_up_messages", lambda: liveness.caught_up)
