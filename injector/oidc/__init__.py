"""The cluster's OIDC issuer as IAM and STS see it: the documents to publish, tokens checked
the way STS checks them, the thumbprint, and where each comes from. Never used by `serve`."""
