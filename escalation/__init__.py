"""Tickets, the L2 desk, SLA policies, business-hours maths, timers and the digest."""
