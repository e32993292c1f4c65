"""Provisioners: `process` (local child processes), `native` (StatefulSets), `import` (a kubeconfig).

Each implements `base.Provisioner`; the per-VirtualCluster worker picks one by name.
"""
