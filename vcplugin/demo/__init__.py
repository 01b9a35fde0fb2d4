"""`vcplugin demo`: the whole system in one process, on a simulated cluster.

An in-memory Kubernetes API, one node agent per node on a simulated NVML (A100 and H100 nodes, some
in MIG mode, some in HAMi-core mode), the scheduler sidecar serving real HTTP, and a driver that calls
it exactly as vc-scheduler's extender plugin does, replaying a built-in workload of Volcano Jobs.
Only the sidecar and the agents are the product; everything around them is test equipment from
`vgpupool_testing`, so no cluster and no GPU are needed.

    workload.py  the cluster and the Volcano Jobs (vcplugin/data/demo-workload.yaml), per seed
    cluster.py   starting and wiring the services, and what kubelet does
    run.py       the replay loop, what it records and checks
    progress.py  the live display on stderr
    report.py    the summary and the HTML report
    cli.py       `vcplugin demo`
"""

from .run import DemoOptions, DemoResult, run_demo

__all__ = ["DemoOptions", "DemoResult", "run_demo"]
