// Command kube is the Kubernetes of a kind node image built offline (tools/kind/node-image.sh):
// one binary, named by the link it is started through, as hyperkube once was:
//
//	kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
//	kubelet, kubeadm, kubectl, etcd  -> the unmodified upstream command
//	kube NAME [ARGS...]               -> the same, for a binary not started through a link
//	kube version                      -> the versions it was built from
//
// One binary links the shared Kubernetes packages once: the build and the node image stay
// small. Each command is the upstream main package's body; nothing is changed.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	_ "time/tzdata" // as upstream: CronJob time zones

	"github.com/spf13/cobra"
	etcdversion "go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/etcdmain"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubeversion "k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanagerapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeadmapp "k8s.io/kubernetes/cmd/kubeadm/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

// Commands are the names this binary answers to.
var commands = map[string]func() int{
	"kube-apiserver":          func() int { return cli.Run(apiserverapp.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanagerapp.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(schedulerapp.NewSchedulerCommand()) },
	"kube-proxy":              func() int { return cli.Run(proxyapp.NewProxyCommand()) },
	"kubelet":                 func() int { return cli.Run(kubeletCommand()) },
	"kubeadm": func() int {
		if err := kubeadmapp.Run(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	},
	"kubectl": func() int {
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
	"etcd": func() int { etcdmain.Main(os.Args); return 0 },
}

// kubeletCommand calls NewKubeletCommand with a context where the version takes one (1.31 on)
// and without where it does not, so the same source builds every minor.
func kubeletCommand() *cobra.Command {
	f := reflect.ValueOf(kubeletapp.NewKubeletCommand)
	var in []reflect.Value
	if f.Type().NumIn() == 1 {
		in = append(in, reflect.ValueOf(context.Background()))
	}
	return f.Call(in)[0].Interface().(*cobra.Command)
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := commands[name]; !ok {
		if len(os.Args) < 2 || os.Args[1] == "version" {
			fmt.Printf("kubernetes %s\netcd %s\n", kubeversion.Get().GitVersion, etcdversion.Version)
			return
		}
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "kube: unknown command %q\n", name)
		os.Exit(2)
	}
	os.Exit(run())
}
