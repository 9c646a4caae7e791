"""Container build and check: `make container`, `make container-check` (see README, "Container")."""
