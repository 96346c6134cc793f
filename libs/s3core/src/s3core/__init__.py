"""s3core: the one library of the s3 platform.

All logic lives here: the s3 search loop, prompts and tag parsing, metrics and the GBR reward,
retrieval and LLM backends, caches, RL losses and configuration.  Services are thin gRPC shells
over these modules and never import each other.
"""

__version__ = "0.1.0"
