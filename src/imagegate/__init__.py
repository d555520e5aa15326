"""imagegate: a self-hosted image-editing API server speaking OpenAI's and the resellers' dialects."""

__version__ = "0.1.0"
