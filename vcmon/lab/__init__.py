"""The province lab: network namespaces, impairment profiles and a user-space ICMP responder.

Everything here serves tests, benchmarks and the demo; the daemon itself never imports it.
"""
