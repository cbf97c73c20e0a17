"""Waking held polls: knows user ids and worker ids, never SQL."""
