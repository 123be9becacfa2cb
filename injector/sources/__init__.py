"""Identity sources: the store the server reads, and what fills it (ServiceAccount and
ConfigMap watches, manifests and the identities file, instance metadata). Answers lookups;
never serves HTTP."""
