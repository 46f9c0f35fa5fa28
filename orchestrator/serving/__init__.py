"""The Ray runtime: expert-worker actors (one per device) and the Ray Serve ingress over the REST API.

`skillroute serve` starts Ray embedded and runs `run_serve`; on a cluster, KubeRay imports
`orchestrator.serving.app:app` (see infra/). Import `ray` only from here, so the inline
runtime and the unit tests never pay for it.
"""
