"""pod-identity-injector: a Kubernetes admission webhook that gives pods AWS IAM credentials."""

__version__ = "0.1.0"
