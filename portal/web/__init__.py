"""The web process: one ASGI app (FastAPI REST + health; the Gradio UI mounts here)."""
