"""Running the platform on one machine: a real redis-server and the services on loopback."""
