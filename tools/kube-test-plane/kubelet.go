//go:build !kubetestplane_e2e && !kubelet_noctx

package main

import (
	"context"

	"github.com/spf13/cobra"

	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

// newKubeletCommand is the upstream kubelet command (since Kubernetes 1.34 it takes a context).
func newKubeletCommand() *cobra.Command { return kubeletapp.NewKubeletCommand(context.Background()) }
