"""Execution backends: how a job's supervisor is started, followed and stopped."""

from .base import Backend, Launched

__all__ = ["Backend", "Launched"]
