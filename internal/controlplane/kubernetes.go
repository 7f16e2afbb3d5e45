package controlplane

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/kube"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
	"github.com/trellis-mesh/trellis/internal/safehttp"
)

// Secrets the control plane reads in its namespace on Kubernetes.
const (
	// CASecretName keeps the generated root (and rotation state).
	CASecretName = "trellis-ca"
	// SuppliedCASecretName is an operator's root or intermediate, in
	// Istio's shape: ca-cert.pem, ca-key.pem, and cert-chain.pem and
	// root-cert.pem when ca-cert.pem is an intermediate.
	SuppliedCASecretName = "cacerts"
)

// kubeMode is what the control plane does differently on Kubernetes.
type kubeMode struct {
	*kubeclient.Clients
	secret kube.CASecret
}

func newKubeMode(cfg *Config) (*kubeMode, error) {
	c, err := kubeclient.Connect(kubeclient.Target{Kubeconfig: cfg.Kubeconfig}, "trellis-control")
	if err != nil {
		return nil, err
	}
	return &kubeMode{Clients: c, secret: kube.CASecret{Client: c.Client, Namespace: cfg.Namespace, Name: CASecretName}}, nil
}

// openKeeper opens the CA kept in the trellis-ca Secret, creating it on
// first start; of two replicas starting at once, the second takes the
// first's. An operator's cacerts Secret, when there, signs instead.
func (k *kubeMode) openKeeper(ctx context.Context, cfg *Config) (*ca.Keeper, error) {
	supplied, err := k.suppliedCA(ctx, cfg)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.StateDir, "ca")
	for range 2 {
		found, err := k.secret.Restore(ctx, dir)
		if err != nil {
			return nil, err
		}
		keeper, err := ca.OpenKeeper(dir, cfg.TrustDomain, supplied)
		if err != nil || found {
			return keeper, err
		}
		if err = k.secret.Create(ctx, dir); !errors.Is(err, kube.ErrSecretExists) {
			return keeper, err
		}
		if err := os.RemoveAll(dir); err != nil { // another replica was first: take its root
			return nil, err
		}
	}
	return nil, errors.New("control plane: the CA secret keeps changing under it")
}

// suppliedCA loads the cacerts Secret, or returns nil when there is none.
func (k *kubeMode) suppliedCA(ctx context.Context, cfg *Config) (*ca.Authority, error) {
	dir := filepath.Join(cfg.StateDir, "cacerts")
	found, err := kube.CASecret{Client: k.Client, Namespace: cfg.Namespace, Name: SuppliedCASecretName}.Restore(ctx, dir)
	if err != nil || !found {
		return nil, err
	}
	read := func(name string) []byte { b, _ := os.ReadFile(filepath.Join(dir, name)); return b }
	chain := read("cert-chain.pem")
	if len(chain) == 0 {
		chain = append(read("ca-cert.pem"), read("root-cert.pem")...)
	}
	auth, err := ca.Load(chain, read("ca-key.pem"), cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", cfg.Namespace, SuppliedCASecretName, err)
	}
	slog.Info("signing with the operator's CA", "secret", cfg.Namespace+"/"+SuppliedCASecretName)
	return auth, nil
}

// injectConfig is what the webhook injects with: the mesh's roots now.
func (p *plane) injectConfig() inject.Config {
	var roots []byte
	for _, c := range p.keeper.Authority().Bundle() {
		roots = append(roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return inject.Config{ProxyImage: p.cfg.ProxyImage, PullPolicy: corev1.PullPolicy(p.cfg.ProxyPullPolicy),
		ControlPlane: p.cfg.ControlPlaneAddr, TrustDomain: p.cfg.TrustDomain, RootPEM: roots,
		Traces: p.cfg.ProxyTraces, TraceSampling: p.cfg.ProxyTraceSampling}
}

// webhookServer serves sidecar injection with the control plane's
// certificate (its DNS names are the Service's).
func (p *plane) webhookServer() *http.Server {
	reviews := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_control_injections_total",
		Help: "Admission reviews of pods, by outcome (injected, skipped, refused)."}, []string{"outcome"})
	p.reg.MustRegister(reviews)
	mux := http.NewServeMux()
	mux.Handle("/inject", &inject.Webhook{Config: p.injectConfig, OnReview: func(o string) { reviews.WithLabelValues(o).Inc() }})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ready\n")) })
	srv := safehttp.Server(mux)
	srv.TLSConfig = p.servingTLS()
	return srv
}

// keepWebhookTrusted keeps the webhook configuration's caBundle set to
// the mesh's roots until ctx is done.
func (p *plane) keepWebhookTrusted(ctx context.Context) error {
	kube.KeepWebhookCABundle(ctx, p.kube.Client, kube.WebhookConfigName, func() []byte { return p.injectConfig().RootPEM }, 5*time.Second)
	return nil
}

// syncCA keeps this replica's CA the one in the Secret, and carries out the
// rotation steps asked for there (kube.AnnotationRotate): the replica that
// stores its step first wins (optimistic concurrency on the Secret); the
// others reload what it stored. It runs until ctx is done.
func (p *plane) syncCA(ctx context.Context) error {
	dir := filepath.Join(p.cfg.StateDir, "ca")
	seen := "" // the Secret's resourceVersion this replica's CA holds
	for {
		if sec, err := p.kube.secret.Read(ctx); err != nil {
			if ctx.Err() == nil {
				refusals.Log(slog.LevelWarn, "CA secret unreadable", "err", err)
			}
		} else {
			if sec.ResourceVersion != seen {
				if err := p.reloadCA(sec, dir); err != nil {
					slog.Error("CA secret: cannot load it", "err", err)
				} else {
					seen = sec.ResourceVersion
				}
			}
			if rv, ok := p.rotateAsAsked(ctx, sec, dir); ok {
				seen = rv
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
}

// reloadCA makes the CA the Secret's, and publishes its bundle.
func (p *plane) reloadCA(sec *corev1.Secret, dir string) error {
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	if err := kube.WriteDir(sec, dir); err != nil {
		return err
	}
	signed := ca.Fingerprint(p.keeper.Authority().SigningCert())
	if err := p.keeper.Reload(); err != nil {
		return err
	}
	prev := p.renewBefore
	p.renewBefore = 0
	if at := p.keeper.ActivatedAt(); !at.IsZero() {
		p.renewBefore = max(prev, at.Unix()+1) // a demand of this rotation stands
		if ca.Fingerprint(p.keeper.Authority().SigningCert()) != signed {
			// Another replica activated the new root; this one signed
			// with the old root until now, after the activation too
			// (it polls the Secret): those certificates are renewed as
			// well, with a second's margin for a signature in flight.
			p.renewBefore = max(p.renewBefore, time.Now().Unix()+2)
		}
	}
	p.publishBundleLocked()
	return nil
}

// rotateAsAsked takes the rotation step the Secret asks for, if it is not
// taken (or refused) yet, and stores the result. It returns the Secret's
// new resourceVersion when this replica's step was stored; "" and false
// otherwise (a step another replica stored first is reloaded next round).
func (p *plane) rotateAsAsked(ctx context.Context, sec *corev1.Secret, dir string) (string, bool) {
	req := sec.Annotations[kube.AnnotationRotate]
	if req == "" || req == sec.Annotations[kube.AnnotationRotated] || strings.HasPrefix(sec.Annotations[kube.AnnotationRotateError], req+": ") {
		return "", false
	}
	step, _, _ := strings.Cut(req, "/")
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	if err := p.rotateLocked(step); err != nil {
		_, _ = p.kube.secret.Update(ctx, sec, dir, map[string]string{kube.AnnotationRotateError: req + ": " + err.Error()})
		return "", false
	}
	out, err := p.kube.secret.Update(ctx, sec, dir, map[string]string{kube.AnnotationRotated: req})
	if err != nil {
		// Another replica was first, or the API server failed: the next
		// round reloads what the Secret holds.
		slog.Info("rotation step not stored; reloading the CA secret", "step", step, "err", err)
		return "", false
	}
	slog.Info("root rotation step taken", "step", step, "phase", p.keeper.Phase())
	p.publishBundleLocked()
	return out.ResourceVersion, true
}
