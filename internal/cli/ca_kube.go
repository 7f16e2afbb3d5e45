package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/trellis-mesh/trellis/internal/controlplane"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/push"
)

// kubeCAAdmin rotates an installed mesh's root: it asks for each step in
// the CA Secret's annotations and reads every control plane replica's
// CA and proxies (GET :15014/debug/ca and /debug/proxies, through the API
// server's pod proxy).
type kubeCAAdmin struct {
	clients   *kubeclient.Clients
	namespace string
	timeout   time.Duration
}

func newKubeCAAdmin(cluster kubeclient.Target, namespace string, timeout time.Duration) (*kubeCAAdmin, error) {
	clients, err := kubeclient.Connect(cluster, "trellis-ca-rotate")
	if err != nil {
		return nil, err
	}
	return &kubeCAAdmin{clients: clients, namespace: namespace, timeout: timeout}, nil
}

// CA is the replicas' CA status; they must agree.
func (k *kubeCAAdmin) CA(ctx context.Context) (controlplane.CAStatus, error) {
	answers, err := kube.ControlPlaneGet(ctx, k.clients, k.namespace, "/debug/ca")
	if err != nil {
		return controlplane.CAStatus{}, err
	}
	var first controlplane.CAStatus
	firstPod := ""
	for pod, data := range answers {
		var st controlplane.CAStatus
		if err := json.Unmarshal(data, &st); err != nil {
			return st, fmt.Errorf("control plane pod %s: %w", pod, err)
		}
		if firstPod == "" {
			first, firstPod = st, pod
		} else if st.Phase != first.Phase || st.BundleVersion != first.BundleVersion {
			return first, fmt.Errorf("control plane pods %s and %s do not agree on the CA yet (phases %s and %s)", firstPod, pod, first.Phase, st.Phase)
		}
	}
	return first, nil
}

// Rotate asks for step, waits until a replica took it and every replica
// holds its result.
func (k *kubeCAAdmin) Rotate(ctx context.Context, step string) (controlplane.CAStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	secret := kube.CASecret{Client: k.clients.Client, Namespace: k.namespace, Name: controlplane.CASecretName}
	req, err := secret.RequestRotation(ctx, step)
	if err != nil {
		return controlplane.CAStatus{}, err
	}
	if err := secret.WaitRotation(ctx, req); err != nil {
		return controlplane.CAStatus{}, err
	}
	want := map[string]string{"prepare": "prepared", "activate": "activated", "finish": "stable"}[step]
	for {
		st, err := k.CA(ctx)
		if err == nil && st.Phase == want {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("the control plane replicas did not all reach phase %s: %v", want, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Proxies are the proxies of every replica (a proxy streams from one).
func (k *kubeCAAdmin) Proxies(ctx context.Context) ([]push.ProxyStatus, error) {
	byPod, err := kube.ProxyStatuses(ctx, k.clients, k.namespace)
	if err != nil {
		return nil, err
	}
	return slices.Collect(maps.Values(byPod)), nil
}
