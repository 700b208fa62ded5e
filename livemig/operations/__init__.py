"""Fleet operations (a drain now; rebalance and consolidate next): persisted,
resumable units whose moves are ordinary livemig migrations.

records.py   the operation, its moves and its events in the inventory
planning.py  what to move where (the scheduler's plan), pure
executor.py  the loop that submits moves as migrations and follows them
flow.py      the operation's TaskFlow flow (plan, run the moves, end)
runner.py    create, run and resume an operation's flow
api.py       the library entry points (re-exported from livemig)
views.py     the plain results they return
"""
