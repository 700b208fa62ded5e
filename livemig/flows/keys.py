"""Names of the values in a live-migration flow's store (all JSON-able)."""

MIGRATION_ID = "migration_id"
INSTANCE_UUID = "instance_uuid"
SOURCE_HOST = "source_host"
DEST_HOST = "dest_host"

# Provided by tasks.
ATTEMPT_DEST_HOST = "attempt_dest_host"
# Optional, stored by the caller: the hosts a chosen destination (and its
# retries) may be among.
CANDIDATE_HOSTS = "candidate_hosts"
VOLUME_SETUP = "volume_setup"
NETWORK_SETUP = "network_setup"
MIGRATION_RESULT = "migration_result"

FLOW_NAME = "livemig-live-migration-flow"
