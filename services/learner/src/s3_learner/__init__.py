"""s3 learner service."""
