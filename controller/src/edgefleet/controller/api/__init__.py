"""The controller's REST API (FastAPI): routes per resource, typed dependencies, one error map."""
