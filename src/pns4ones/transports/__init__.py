"""Thin adapters between the network and the hub."""
