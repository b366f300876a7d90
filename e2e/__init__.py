"""End-to-end runs: the emulated (or a real) Kubernetes API and `metapolicy run` as separate
processes, driven by a simulated autoscaler that plays scenario files.

* `e2e.cluster` starts and stops the processes (one path for the emulator and a real cluster);
* `e2e.nodes` creates, cordons, taints, flaps and deletes Node objects;
* `e2e.autoscaler` loads and plays `e2e/scenarios/*.yaml`, waiting on MetaPolicy status;
* `e2e.demo` is the one-command demo (`python -m e2e.demo`).
"""
