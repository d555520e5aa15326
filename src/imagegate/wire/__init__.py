"""Wire helpers that every dialect and the operator API share: typed field readers, bounded multipart
parsing, the OpenAI-style image request fields several dialects accept, and outbound HTTP plumbing.
Nothing here belongs to one dialect, so dialects depend on it and never on each other."""
