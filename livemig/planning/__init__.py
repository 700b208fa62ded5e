"""Pure fleet planners: a snapshot of the fleet in, an ordered plan of moves out."""
