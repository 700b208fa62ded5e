"""Pure fleet planners: a snapshot of the fleet in, an ordered plan of moves out.

model.py        the contract: Fleet (hosts, instances) in, Plan (waved moves, figures) out
capacity.py     what an instance takes of a host and what a host can hold
bounds.py       the consolidation lower bound, the imbalance measure, the power model
ordering.py     a target assignment made into executable waves; check_plan replays a plan
consolidate.py  plan_consolidation: fewest hosts (CP-SAT, or first-fit decreasing), then fewest moves
rebalance.py    plan_rebalance: greedy best-move hill climbing on the imbalance measure
"""
