package controlplane

import (
	"flag"
	"strings"
	"time"
)

// RegisterFlags defines the control plane's flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.StateDir, "control-state-dir", "", "directory of the CA, spent tokens and the admin socket (required)")
	fs.StringVar(&c.Registry, "registry", "", "registry file the mesh is discovered from (one host)")
	fs.BoolVar(&c.Kubernetes, "kubernetes", false, "discover the mesh from the Kubernetes API server, prove first certificates with TokenReview and serve sidecar injection")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server (with --kubernetes; default $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	fs.StringVar(&c.Namespace, "namespace", "", "the control plane's namespace (with --kubernetes; default $POD_NAMESPACE, else trellis-system)")
	fs.StringVar(&c.WebhookAddr, "webhook-addr", ":15017", "address of the injection webhook (TLS, with --kubernetes)")
	fs.StringVar(&c.ProxyImage, "proxy-image", "", "image of the sidecar the webhook injects (with --kubernetes)")
	fs.StringVar(&c.ProxyPullPolicy, "proxy-pull-policy", "", "pull policy of the injected sidecar's image (Always, IfNotPresent, Never; default the cluster's)")
	fs.StringVar(&c.ProxyTraces, "proxy-traces", "control-plane", "where injected sidecars send spans over OTLP: control-plane (the dashboard), a collector's host:port, or empty for nowhere")
	fs.Float64Var(&c.ProxyTraceSampling, "proxy-trace-sampling", 1, "percentage of requests injected sidecars trace")
	fs.StringVar(&c.ControlPlaneAddr, "control-plane-addr", "", "where injected sidecars reach the control plane (default trellis-control.NAMESPACE.svc:15012)")
	fs.StringVar(&c.TrustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", ":15012", "address of the CA and config-stream gRPC service (TLS)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "127.0.0.1:15014", "address of /metrics")
	fs.StringVar(&c.DashboardAddr, "dashboard-addr", "127.0.0.1:20001", "address of the dashboard and its API")
	fs.Func("dashboard-host", "a host name the dashboard answers to besides localhost and IP addresses (repeatable); others are refused against DNS rebinding", func(v string) error {
		c.DashboardHosts = append(c.DashboardHosts, v)
		return nil
	})
	fs.BoolVar(&c.NoDashboard, "no-dashboard", false, "serve no dashboard and scrape no sidecar")
	fs.DurationVar(&c.ScrapeInterval, "scrape-interval", 5*time.Second, "how often the dashboard scrapes the sidecars' metrics")
	fs.Func("node-agent-metrics", "node agents' metrics URLs, scraped for the flows network policy denied (repeatable, or comma-separated)", func(v string) error {
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				c.NodeAgents = append(c.NodeAgents, u)
			}
		}
		return nil
	})
	fs.StringVar(&c.PrometheusURL, "prometheus", "", "read the dashboard's figures from this Prometheus server (http://host:9090) instead of scraping the sidecars")
	fs.StringVar(&c.CACert, "ca-cert", "", "an operator's root or intermediate certificate (PEM), with its chain")
	fs.StringVar(&c.CAKey, "ca-key", "", "the key of --ca-cert (PEM, PKCS#8)")
	fs.DurationVar(&c.SVIDTTL, "svid-ttl", 24*time.Hour, "lifetime of workload certificates (renewed at half life)")
	fs.IntVar(&c.MaxConns, "max-conns", 20000, "gRPC connections open at once, in all (-1: no cap)")
	fs.IntVar(&c.MaxConnsPerSource, "max-conns-per-source", 256, "gRPC connections open at once from one address (-1: no cap)")
	fs.DurationVar(&c.Debounce, "debounce", 100*time.Millisecond, "how long a burst of changes may settle before it is pushed")
}
