"""Cameras as devices: snapshots, health, masks (docs/cameras.md)."""
