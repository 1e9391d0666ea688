"""The Jupyter server extension: app, handlers and the OpenAPI document."""
