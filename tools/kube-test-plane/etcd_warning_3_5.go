//go:build etcd3_5

package main

import "go.etcd.io/etcd/server/v3/embed"

// setWarningUnaryRequestDuration does nothing: etcd 3.5 (Kubernetes before 1.34) has no such
// setting in its embed.Config.
func setWarningUnaryRequestDuration(*embed.Config) {}
