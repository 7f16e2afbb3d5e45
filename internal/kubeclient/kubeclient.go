// Package kubeclient connects to a Kubernetes API server: from a
// kubeconfig, or in a pod from its service account. A leaf (it imports
// client-go only), so the node agent links it without the control plane's
// Kubernetes side (internal/kube).
package kubeclient

import (
	"errors"
	"fmt"
	"net/http"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Target says which API server to use: a kubeconfig file and a context in
// it, as kubectl's --kubeconfig and --context do.
type Target struct {
	// Kubeconfig is the file; empty means $KUBECONFIG (a list, as for
	// kubectl), else ~/.kube/config, else the pod's in-cluster service
	// account.
	Kubeconfig string
	// Context is the context to use; empty means the file's current one.
	Context string
}

// RESTConfig is the API server connection t names. A kubeconfig given
// explicitly is that file or an error, never the in-cluster account.
func RESTConfig(t Target) (*rest.Config, error) {
	overrides := &clientcmd.ConfigOverrides{CurrentContext: t.Context}
	var loader clientcmd.ClientConfig
	if t.Kubeconfig != "" {
		file, err := clientcmd.LoadFromFile(t.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes: kubeconfig %s: %w", t.Kubeconfig, err)
		}
		if t.Context == "" && file.CurrentContext == "" {
			return nil, fmt.Errorf("kubernetes: kubeconfig %s has no current context: give --context", t.Kubeconfig)
		}
		loader = clientcmd.NewNonInteractiveClientConfig(*file, t.Context, overrides, nil)
	} else {
		loader = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(clientcmd.NewDefaultClientConfigLoadingRules(), overrides)
	}
	cfg, err := loader.ClientConfig()
	switch {
	case clientcmd.IsEmptyConfig(err):
		return nil, errors.New("kubernetes: no kubeconfig ($KUBECONFIG unset or naming no file, no ~/.kube/config) and not in a pod: give --kubeconfig or set KUBECONFIG")
	case err != nil && t.Context != "":
		return nil, fmt.Errorf("kubernetes: %w (see kubectl config get-contexts)", err)
	case err != nil:
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return cfg, nil
}

// NewClient connects to the API server t names, identifying as
// userAgent.
func NewClient(t Target, userAgent string) (kubernetes.Interface, *rest.Config, error) {
	cfg, err := RESTConfig(t)
	if err != nil {
		return nil, nil, err
	}
	cfg.UserAgent = userAgent
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes: %w", err)
	}
	return cs, cfg, nil
}

// Clients are the typed and dynamic clients of one API server, and the
// configuration they were made from.
type Clients struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Config  *rest.Config
}

// Connect makes both clients (see NewClient).
func Connect(t Target, userAgent string) (*Clients, error) {
	client, rc, err := NewClient(t, userAgent)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return &Clients{Client: client, Dynamic: dyn, Config: rc}, nil
}

// Transport is an http.RoundTripper that authenticates to the API server
// as the clients do, for requests to paths of it (a pod proxy's) that the
// typed clients do not model.
func (c *Clients) Transport() (http.RoundTripper, error) {
	rt, err := rest.TransportFor(c.Config)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	return rt, nil
}
