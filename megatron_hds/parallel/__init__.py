"""Everything that knows about process groups: rank layout, TP layers, collectives, schedules."""
