"""s3 searcher service: runs s3 episodes (spec §2) with the search policy; see ``server.py``."""
