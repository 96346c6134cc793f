"""`s3 eval`: run a method over question sets through the services and score it (spec §4)."""
