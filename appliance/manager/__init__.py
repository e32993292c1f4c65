"""vc-manager: VirtualCluster/ClusterVersion reconciliation and the tenant control planes.

`controller.run` is the entry point; provisioners live in `provision/`. The manager talks
to the rest of the appliance only through Kubernetes objects (the VirtualCluster status and
the root-namespace secrets).
"""
