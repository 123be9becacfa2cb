// The Go webhook (aws/amazon-eks-pod-identity-webhook), pinned, for the cluster tier's
// migration tests: built from its Go module by build.sh, never shipped.
module pod-identity-injector/tools/go-webhook

go 1.26.3

require github.com/aws/amazon-eks-pod-identity-webhook v0.6.17
