"""Project configuration: settings, URLs, the ASGI application and the development launcher."""
