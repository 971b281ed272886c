"""Prefect deployment definitions for loraflow's flows."""
