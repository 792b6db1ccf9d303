"""Metrics, the stream runner, tables and plots."""
