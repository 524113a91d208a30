"""gyoza: containerised jobs on your own machines and GPUs."""

from .client import AsyncGyozaClient, GyozaClient
from .models import OpDefinition

__all__ = ["GyozaClient", "AsyncGyozaClient", "OpDefinition"]
__version__ = "0.1.0"
