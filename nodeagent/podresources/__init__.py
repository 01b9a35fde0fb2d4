"""Kubelet pod-resources API (v1) for the node agent: generated stubs and the allocation verifier."""

from .verifier import DEFAULT_SOCKET, Expectation, Outcome, PodResourcesVerifier, Verdict

__all__ = ["DEFAULT_SOCKET", "Expectation", "Outcome", "PodResourcesVerifier", "Verdict"]
