"""The province lab: network namespaces, impairment profiles and a user-space ICMP responder.

Everything here serves tests, benchmarks, ``vcmon lab`` and the demo. The daemon imports only
:func:`vcmon.lab.netns.in_netns`, and only when told to probe from a namespace (``--netns``).
"""
