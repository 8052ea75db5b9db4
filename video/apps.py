from django.apps import AppConfig


class VideoConfig(AppConfig):
    name = "video"

    def ready(self) -> None:
        from tenancy import health

        from . import liveness

        # Messages this process delivered only through the catch-up (a lost flush notice); grows, never resets.
        health.register_gauge("video_catch_up_messages", lambda: liveness.caught_up)
