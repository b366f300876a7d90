"""End-to-end runs: the emulated (or a real) Kubernetes API and `metapolicy run` as separate
processes, driven by a simulated autoscaler that plays scenario files.

* `e2e.cluster` starts and stops the processes (one path for the emulator and a real cluster);
* `e2e.nodes` creates, cordons, taints, flaps and deletes Node objects;
* `e2e.autoscaler` loads and plays `e2e/scenarios/*.yaml`, waiting on MetaPolicy status;
* `e2e.serve` runs `metapolicy serve`; `e2e.scheduler` plays kube-scheduler with the MetaPolicy
  extender (binding pods through the API) and `e2e.workload` creates pods from a task stream;
* `e2e.demo` is the one-command demo (`python -m e2e.demo`).
"""
