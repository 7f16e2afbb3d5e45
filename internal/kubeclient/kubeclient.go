// Package kubeclient connects to a Kubernetes API server: from a
// kubeconfig, or in a pod from its service account. A leaf (it imports
// client-go only), so the node agent links it without the control plane's
// Kubernetes side (internal/kube).
package kubeclient

import (
	"fmt"
	"net/http"
	"os"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig is the API server connection: from kubeconfig when given,
// else from $KUBECONFIG, else the pod's in-cluster service account.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		kubeconfig = os.Getenv("KUBECONFIG")
	}
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes: not in a pod (%v); give --kubeconfig or set KUBECONFIG", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes: kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// NewClient connects to the API server (see RESTConfig), identifying as
// userAgent.
func NewClient(kubeconfig, userAgent string) (kubernetes.Interface, *rest.Config, error) {
	cfg, err := RESTConfig(kubeconfig)
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
func Connect(kubeconfig, userAgent string) (*Clients, error) {
	client, rc, err := NewClient(kubeconfig, userAgent)
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
