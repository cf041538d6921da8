"""Prometheus metrics: the collector, the text exposition and textfile, the HTTP
endpoint.
"""
