"""vc-appliance: VirtualCluster-style hard multi-tenancy for Kubernetes in one trio process."""
