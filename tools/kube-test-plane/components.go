//go:build !kubetestplane_e2e

package main

import (
	"github.com/spf13/cobra"

	controllermanagerapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// The components a cluster runs beside kube-apiserver and etcd (tools/local-cluster).
func init() {
	upstreamCommands["kube-controller-manager"] = controllermanagerapp.NewControllerManagerCommand
	upstreamCommands["kube-scheduler"] = func() *cobra.Command { return schedulerapp.NewSchedulerCommand() }
	upstreamCommands["kubelet"] = newKubeletCommand
}
