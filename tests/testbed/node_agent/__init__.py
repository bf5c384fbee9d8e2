"""The testbed's node agent: a kubelet stand-in that runs every pod bound to its node as local processes.

There is no container runtime on the testbed machines, so the agent registers a Node with a real
kube-apiserver under a node identity (Node authorizer and NodeRestriction apply, as to a kubelet),
watches the pods bound to it, and runs their containers as process trees in private mount namespaces
on the host network, reporting status, probes, logs and deletion the way a kubelet does. Run it with
``python -m tests.testbed.node_agent --help``.
"""
