"""The browser client: static files under static/, served by messenger.api.web."""
