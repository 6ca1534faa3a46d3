"""The shipped training configurations (YAML files), reachable as package resources."""
