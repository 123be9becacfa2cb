//go:build !etcd3_5

package main

import "go.etcd.io/etcd/server/v3/embed"

// setWarningUnaryRequestDuration sets etcd's slow-request threshold to its CLI default:
// embed.NewConfig leaves it at 0, which makes every request log a "request stats" warning.
func setWarningUnaryRequestDuration(cfg *embed.Config) {
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration
}
