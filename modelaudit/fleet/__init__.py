"""Many models: fleet scans, the scan store and triage, on top of ``api.scan`` (never inside it).

An executor (local by default, Ray when asked) runs scans and returns reports; the driver alone writes
them into the scan store; triage reads the store and records decisions that later scans carry.
"""
