"""The domain core: statistics, batches, idempotency, tokens and the errors they raise.

Plain functions and value types with no I/O and no framework: nothing here
imports falcon, waitress, etcd or anything of sensorstats outside this package.
"""
