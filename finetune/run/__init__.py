"""Runs end to end: resolve the settings, train, report, export; the lr-find, demo and run-listing drivers."""
