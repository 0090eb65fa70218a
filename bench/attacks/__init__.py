"""Every attack of issue 11 against a real `vcmon run`, on loopback, each bounded in count and
time: did the bound hold? `python -m bench.attacks` prints a table *attack | held? | figure*
and writes bench/results/attacks.json.

Each group is a function (tmp directory, flood duration, notes) → rows; see GROUPS in
__main__. Storage faults need root (a tmpfs, a read-only bind mount); the MQTT rows need
mosquitto; rows that cannot be staged say "skipped" and why.
"""
