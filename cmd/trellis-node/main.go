// Command trellis-node is the node agent: it enforces the mesh's
// NetworkPolicies with nftables. In one-host mode `trellis up` runs the same
// agent as `trellis node-agent`; on Kubernetes it runs as the DaemonSet
// trellis-node that `trellis install` creates, one per node, on the host
// network. See internal/nodeagent.
//
//	trellis-node [--mesh-api SOCKET] [--table NAME] [--metrics-addr ADDR] [--resync D] [--guard-table NAME]
//	trellis-node --kubernetes [--kubeconfig FILE] [--node-name NODE] [--namespace NS] [--table NAME] [--cni-results DIR] ...
//
// It links the agent, its policy compiler and the API client only (a test
// enforces it).
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/nft"
	"github.com/trellis-mesh/trellis/internal/nodeagent"
)

// daemonSet is the name `trellis install` gives the agent's DaemonSet.
const daemonSet = "trellis-node"

type flags struct {
	api                             string
	kubernetes                      bool
	kubeconfig, nodeName, namespace string
	cniResults                      string
}

func main() {
	var cfg nodeagent.Config
	var f flags
	fs := flag.NewFlagSet("trellis-node", flag.ExitOnError)
	cfg.RegisterFlags(fs)
	fs.StringVar(&f.api, "mesh-api", nodeagent.DefaultMeshAPI, "API socket of the one-host mesh whose policies to enforce")
	fs.BoolVar(&f.kubernetes, "kubernetes", false, "enforce the NetworkPolicies of a Kubernetes cluster for the pods of this node")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig (with --kubernetes; default $KUBECONFIG, else ~/.kube/config, else the pod's service account)")
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "the node this agent runs on (with --kubernetes; default $NODE_NAME)")
	fs.StringVar(&f.cniResults, "cni-results", "", "with --kubernetes: guard the pods' links (own MAC and IPv4 address only, no IPv6, no broadcast), learnt from libcni's result cache in this directory (/var/lib/cni/results); the bridge table has the policy table's name")
	fs.StringVar(&f.namespace, "namespace", cmp.Or(os.Getenv("POD_NAMESPACE"), "trellis-system"), "the namespace Trellis is installed in (with --kubernetes)")
	_ = fs.Parse(os.Args[1:])
	if err := run(cfg, f); err != nil {
		fmt.Fprintln(os.Stderr, "trellis-node:", err)
		os.Exit(1)
	}
}

func run(cfg nodeagent.Config, f flags) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: it writes nftables rules (CAP_NET_ADMIN)")
	}
	var client kubernetes.Interface
	if f.kubernetes {
		if f.nodeName == "" {
			return fmt.Errorf("--kubernetes needs --node-name (or $NODE_NAME from the pod's spec.nodeName)")
		}
		var err error
		if client, _, err = kubeclient.NewClient(kubeclient.Target{Kubeconfig: f.kubeconfig}, "trellis-node"); err != nil {
			return err
		}
		cfg.Source = nodeagent.KubeSource(client, f.nodeName)
		if f.cniResults != "" {
			cfg.GuardTable = cfg.Table
		} else if err := nft.DeleteGuard(nft.Table{Name: cfg.Table}); err != nil { // the guard was turned off
			return err
		}
	} else {
		cfg.Source = nodeagent.OneHostSource(f.api)
	}
	agent, err := nodeagent.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	guardDone := make(chan error, 1)
	if f.kubernetes && f.cniResults != "" {
		guard := &nodeagent.CNIGuard{Dir: f.cniResults, Table: cfg.GuardTable}
		go func() {
			err := guard.Run(ctx)
			guardDone <- err
			if err != nil {
				stop() // a node whose pods cannot be guarded shows as a failing agent
			}
		}()
	} else {
		guardDone <- nil
	}
	if err := agent.Run(ctx); err != nil {
		return err
	}
	stop()
	if err := <-guardDone; err != nil {
		return fmt.Errorf("guard the pods' links: %w", err)
	}
	if client != nil {
		return removeIfUninstalled(client, f.namespace, cfg.Table)
	}
	return nil
}

// removeIfUninstalled removes the policy table when the agent stops
// because Trellis is being uninstalled, so no stale rule outlives it: its
// DaemonSet is gone or going, or its own rights or service account are
// already gone (Helm deletes those without waiting for the pods). On any
// other stop (a restart, an upgrade, an eviction) the rules stay in force
// until the next agent replaces them.
func removeIfUninstalled(client kubernetes.Interface, namespace, table string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ds, err := client.AppsV1().DaemonSets(namespace).Get(ctx, daemonSet, metav1.GetOptions{})
	switch {
	case err == nil && ds.DeletionTimestamp != nil, apierrors.IsNotFound(err), apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		why := "its DaemonSet is being deleted"
		if err != nil {
			why = err.Error()
		}
		slog.Info("Trellis is being uninstalled: removing the network policy table", "table", table, "because", why)
		return nft.DeleteTable(nft.Table{Name: table})
	case err != nil:
		slog.Warn("cannot tell whether Trellis is being uninstalled; the network policy table stays", "err", err)
	}
	return nil
}
