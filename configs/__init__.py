"""Shipped run configs (YAML), installed as the bdsel_configs package."""
