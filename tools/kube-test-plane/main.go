// Command kube-test-plane is a test-only multi-call binary that bundles the
// processes of a small Kubernetes cluster for end-to-end tests:
//
//	kube-test-plane kube-apiserver [kube-apiserver flags...]
//	kube-test-plane etcd --data-dir D --listen-client-url http://127.0.0.1:P --listen-peer-url http://127.0.0.1:Q
//	kube-test-plane kube-controller-manager [flags...]
//	kube-test-plane kube-scheduler [flags...]
//	kube-test-plane kubelet [flags...]
//	kube-test-plane version
//
// One binary links the shared Kubernetes packages once, which keeps the cold build
// and the cache small. The first two are all the API-server tier needs; the local
// cluster (tools/local-cluster) runs all five.
//
// Each subcommand is meant to run in its own process; the e2e fixtures start
// one process per subcommand. It is never shipped: see README.md.
//
// Build tags (build.sh sets them from versions.txt):
//
//	kubetestplane_e2e  only kube-apiserver and etcd, what the e2e tier starts: the
//	                   build for the other Kubernetes minors takes minutes less
//	etcd3_5            etcd 3.5 (Kubernetes before 1.34), see etcd_warning*.go
//	kubelet_noctx      Kubernetes before 1.34, whose kubelet command takes no context
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	// Embedded zone database, as in the upstream kube-apiserver (CronJob time zones).
	_ "time/tzdata"

	"github.com/spf13/cobra"
	etcdversion "go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"

	"k8s.io/component-base/cli"
	// Same side-effect registrations as the upstream kube-apiserver main package.
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubeversion "k8s.io/component-base/version"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// inputsHash is set by build.sh (-ldflags -X main.inputsHash=...) to a hash of
// the files the binary is built from, so build.sh can tell a stale cached binary.
var inputsHash = "unknown"

// upstreamCommands holds the components beside kube-apiserver and etcd, by subcommand;
// components.go fills it unless the binary is built for the e2e tier alone.
var upstreamCommands = map[string]func() *cobra.Command{}

const usage = `usage:
  kube-test-plane kube-apiserver [kube-apiserver flags]
  kube-test-plane etcd --data-dir DIR --listen-client-url http://127.0.0.1:PORT --listen-peer-url http://127.0.0.1:PORT [--log-level LEVEL] [--unsafe-no-fsync=false]
  kube-test-plane kube-controller-manager [kube-controller-manager flags]
  kube-test-plane kube-scheduler [kube-scheduler flags]
  kube-test-plane kubelet [kubelet flags]
  kube-test-plane version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, rest := os.Args[1], os.Args[2:]
	switch sub {
	case "kube-apiserver":
		os.Exit(runAPIServer(rest))
	case "etcd":
		os.Exit(runEtcd(rest))
	case "version", "--version", "-version":
		fmt.Printf("kube-apiserver %s\netcd %s\ninputs %s\ncomponents %s\n",
			kubeversion.Get().GitVersion, etcdversion.Version, inputsHash, components())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		if newCommand, ok := upstreamCommands[sub]; ok {
			os.Exit(runUpstream(sub, rest, newCommand))
		}
		fmt.Fprintf(os.Stderr, "kube-test-plane: unknown subcommand %q (components: %s)\n%s", sub, components(), usage)
		os.Exit(2)
	}
}

// components names what this binary can run: "all", or "e2e" (kube-apiserver and etcd).
func components() string {
	if len(upstreamCommands) == 0 {
		return "e2e"
	}
	return "all"
}

// runAPIServer runs the unmodified kube-apiserver command. cobra parses
// os.Args[1:], so the process is made to look exactly like the upstream binary.
func runAPIServer(args []string) int {
	os.Args = append([]string{"kube-apiserver"}, args...)
	return cli.Run(apiserverapp.NewAPIServerCommand())
}

// runUpstream runs an unmodified upstream component command under its own name,
// exactly as its upstream main package does.
func runUpstream(name string, args []string, newCommand func() *cobra.Command) int {
	os.Args = append([]string{name}, args...)
	return cli.Run(newCommand())
}

// runEtcd starts a single-member etcd server in this process and blocks until
// SIGINT/SIGTERM or a fatal server error.
func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "data directory (required)")
	clientURL := fs.String("listen-client-url", "http://127.0.0.1:2379", "client URL; must be a loopback http URL")
	peerURL := fs.String("listen-peer-url", "http://127.0.0.1:2380", "peer URL; must be a loopback http URL")
	name := fs.String("name", "e2e", "member name")
	noFsync := fs.Bool("unsafe-no-fsync", true, "skip fsync (test use only)")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	readyTimeout := fs.Duration("ready-timeout", 60*time.Second, "give up if the server is not ready by then")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "etcd: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}
	cu, err := loopbackURL(*clientURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: --listen-client-url:", err)
		return 2
	}
	pu, err := loopbackURL(*peerURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: --listen-peer-url:", err)
		return 2
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 2
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.UnsafeNoFsync = *noFsync
	setWarningUnaryRequestDuration(cfg)
	cfg.LogLevel = *logLevel
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}

	// Listen for signals before starting, so an early SIGTERM still stops cleanly.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)

	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: start:", err)
		return 1
	}
	defer srv.Close()

	select {
	case <-srv.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd %s ready: client %s, peer %s, data %s\n", etcdversion.Version, cu, pu, dir)
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "etcd: %s before ready, stopping\n", s)
		return 0
	case <-time.After(*readyTimeout):
		fmt.Fprintf(os.Stderr, "etcd: not ready after %s\n", *readyTimeout)
		return 1
	}

	select {
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "etcd: %s, stopping\n", s)
		return 0
	case err := <-srv.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
}

// loopbackURL parses an http URL and insists on a literal loopback IP host
// with an explicit port: this binary must never listen beyond the machine.
func loopbackURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%q: only http:// is supported", raw)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || port == "" {
		return nil, fmt.Errorf("%q: want http://127.0.0.1:PORT", raw)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("%q: host must be a loopback IP such as 127.0.0.1", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}
