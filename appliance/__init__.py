"""vc-appliance: VirtualCluster-style hard multi-tenancy for Kubernetes in one trio process."""

__version__ = "0.1.0"
