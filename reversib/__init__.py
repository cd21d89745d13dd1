"""reversib: verify a provider's data exports against their manifests, and keep the evidence."""

__version__ = "0.1.0"
