package kube

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// WebhookConfigName is the MutatingWebhookConfiguration `trellis install`
// creates for sidecar injection.
const WebhookConfigName = "trellis-sidecar-injector"

// NodeAgent names the node agent's DaemonSet, whose pods are labelled
// app=NodeAgent, in the install's namespace.
const NodeAgent = "trellis-node"

// KeepWebhookCABundle sets the caBundle of every webhook in the
// MutatingWebhookConfiguration name to bundle() (PEM), at once and then
// every interval until ctx is done: the API server then trusts the
// control plane's webhook certificate, also after a root rotation or an
// edit that dropped it. A missing configuration is waited for (the
// control plane runs before `trellis install` finishes).
func KeepWebhookCABundle(ctx context.Context, client kubernetes.Interface, name string, bundle func() []byte, interval time.Duration) {
	api := client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	var lastErr string
	for {
		err := func() error {
			cfg, err := api.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			want, changed := bundle(), false
			for i := range cfg.Webhooks {
				if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, want) {
					cfg.Webhooks[i].ClientConfig.CABundle, changed = want, true
				}
			}
			if !changed {
				return nil
			}
			if _, err = api.Update(ctx, cfg, metav1.UpdateOptions{}); err == nil {
				slog.Info("injection webhook trusts the mesh's roots", "config", name)
			}
			return err
		}()
		if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil && err.Error() != lastErr {
			slog.Warn("injection webhook: cannot set its caBundle", "config", name, "err", err)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// WebhookCABundle is the caBundle the control plane set in the webhook
// registration name: the mesh's roots (PEM).
func WebhookCABundle(ctx context.Context, client kubernetes.Interface, name string) ([]byte, error) {
	cfg, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for _, h := range cfg.Webhooks {
		if len(h.ClientConfig.CABundle) > 0 {
			return h.ClientConfig.CABundle, nil
		}
	}
	return nil, errors.New("its caBundle is empty: the control plane has not set it yet")
}
