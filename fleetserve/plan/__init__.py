"""The planner: the cheapest mix of hardware that serves a workload within its SLO. Per-device capacities for
each (input length, output length) bucket go in; an integer program (`assignment`) chooses how many devices
of each type to rent and which type serves which bucket's traffic, either Mélange's way (each slice of a
bucket to one type) or split freely; `melange_input` reads Mélange's own solver input so both can be compared
on the same numbers.
"""
