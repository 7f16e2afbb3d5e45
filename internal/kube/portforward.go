package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"

	"github.com/trellis-mesh/trellis/internal/kubeclient"
)

// PortForward forwards 127.0.0.1:local to port remote of a pod through the
// API server, as `kubectl port-forward` does (WebSocket, or SPDY on an
// older API server), until ctx is done. ready is closed once it listens.
func PortForward(ctx context.Context, c *kubeclient.Clients, namespace, pod string, local, remote int, ready chan struct{}, errOut io.Writer) error {
	url := c.Client.CoreV1().RESTClient().Post().Namespace(namespace).Resource("pods").Name(pod).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(c.Config)
	if err != nil {
		return fmt.Errorf("port-forward: %w", err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
	ws, err := portforward.NewSPDYOverWebsocketDialer(url, c.Config)
	if err != nil {
		return fmt.Errorf("port-forward: %w", err)
	}
	dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	fw, err := portforward.NewOnAddressesWithContext(ctx, dialer, []string{"127.0.0.1"},
		[]string{strconv.Itoa(local) + ":" + strconv.Itoa(remote)}, ready, io.Discard, errOut)
	if err != nil {
		return fmt.Errorf("port-forward: %w", err)
	}
	return fw.ForwardPorts()
}
