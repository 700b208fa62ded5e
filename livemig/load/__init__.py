"""Load data: what hosts and instances really use, sampled from the
hypervisors (sampler), kept in the database (LoadSample), and read back as
the planners' Fleet (fleet)."""
