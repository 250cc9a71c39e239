"""Versioned, verifiable TWIN model artifacts: safetensors weights + a JSON manifest.

    from model_store.registry import ModelRegistry
    reg = ModelRegistry(root)
    version = reg.publish(model, metrics={...}, data_fingerprint="...")
    model, manifest = reg.load(version)
"""
from model_store.errors import ArtifactError, RegistryError, VersionNotFoundError

__all__ = ["ArtifactError", "RegistryError", "VersionNotFoundError"]
