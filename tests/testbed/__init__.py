"""The pydeploy test bed: simulated hosts, a registry and images (see fixture.py, up.sh)."""
