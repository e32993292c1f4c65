"""The trio Kubernetes client: credentials, REST verbs, watches and informers.

Imports nothing from the rest of `appliance`; everything else builds on it.
"""
