package proxy

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/controlclient"
	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
	"github.com/trellis-mesh/trellis/internal/safehttp"
	"github.com/trellis-mesh/trellis/internal/telemetry"
)

// Config configures a sidecar. Zero fields take the defaults given.
type Config struct {
	// ControlPlane, when set, is the control plane's address (host:15012):
	// the sidecar gets its certificate and config from it, and needs
	// ControlPlaneBundle, Identity, PodNamespace, PodName and TokenFile.
	ControlPlane string
	// AppProbes are the app's Kubernetes probes the health listener runs
	// on the kubelet's behalf (JSON keyed by /app-health/CONTAINER/KIND,
	// see AppProbe). Empty: none.
	AppProbes string
	// AppAddr is where the inbound reaches the app: the pod's address
	// (default $POD_IP), or 127.0.0.1 when empty.
	AppAddr string
	// Cluster is the source_cluster and destination_cluster of the
	// metrics: "one-host", or "Kubernetes" (Istio's default) in a cluster.
	Cluster string
	// ControlPlaneBundle holds the roots (PEM) that verify the control
	// plane until it sends a bundle of its own.
	ControlPlaneBundle string
	// Identity is the workload's SPIFFE ID.
	Identity string
	// PodNamespace and PodName name the sidecar's pod.
	PodNamespace, PodName string
	// TokenFile holds the one-time bootstrap token for the first
	// certificate.
	TokenFile string

	// Without a control plane: ConfigFile is the ProxyConfig (protobuf
	// JSON), watched, and Certs are the SVID and trust bundle files,
	// watched. Required then.
	ConfigFile string
	Certs      meshtls.Files
	// Listener addresses. Defaults :15001, :15006, :15021, :15020
	// (metrics, /stats/prometheus) and 127.0.0.1:15000 (admin is never
	// reachable from outside the pod).
	OutboundAddr, InboundAddr, HealthAddr, MetricsAddr, AdminAddr string
	// Mark, when not zero, is set on the proxy's own connections (it
	// needs CAP_NET_ADMIN over the pod's network). Default 0: the capture
	// rules let the proxy through by its uid instead.
	Mark int
	// Drain is how long in-flight requests may finish after SIGTERM.
	// Default 5 s.
	Drain time.Duration
	// WriteIdleTimeout cuts off a response the client stops reading for
	// that long. Default 5 min (Envoy's stream idle timeout).
	WriteIdleTimeout time.Duration
	// MaxConnections bounds the connections each side (outbound,
	// inbound) holds open at once. Default DefaultMaxConnections.
	MaxConnections int
	// TraceSampling is the percentage (0..100) of new traces recorded, as
	// Istio's tracing.sampling. Default 0: none.
	TraceSampling float64
	// OTLPEndpoint is where finished spans go, over OTLP/gRPC: "" nowhere,
	// "control-plane" to the control plane (over mutual TLS, as the
	// config stream), host:port to a collector in plaintext.
	OTLPEndpoint string
	// TraceService names the spans' service (service.name). Default the
	// pod's name and namespace.
	TraceService string
	// Upstreams are explicit listeners: each sends what the app connects
	// to it to a service port, for hosts where the redirect rules cannot
	// be set up.
	Upstreams []Upstream
	// AccessLog is where each request's entry goes, as JSON lines:
	// "stdout", "stderr" or "off". Default stdout (the container log).
	AccessLog string
}

func (c *Config) setDefaults() error {
	c.Cluster = cmp.Or(c.Cluster, "one-host")
	if _, err := netip.ParseAddr(c.AppAddr); c.AppAddr != "" && err != nil {
		return fmt.Errorf("sidecar: --app-address %q is not an IP address", c.AppAddr)
	}
	switch {
	case c.ControlPlane != "":
		if c.ControlPlaneBundle == "" || c.Identity == "" || c.PodNamespace == "" || c.PodName == "" || c.TokenFile == "" {
			return errors.New("sidecar: with --control-plane, --control-plane-bundle, --identity, --pod-namespace, --pod-name and --token-file are required")
		}
		if _, err := identity.Parse(c.Identity); err != nil {
			return fmt.Errorf("sidecar: --identity: %w", err)
		}
	case c.ConfigFile == "" || c.Certs.Cert == "" || c.Certs.Key == "" || c.Certs.Bundle == "":
		return errors.New("sidecar: give --control-plane, or a config file and certificate, key and bundle files")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.OutboundAddr, ":15001")
	def(&c.InboundAddr, ":15006")
	def(&c.HealthAddr, ":15021")
	def(&c.MetricsAddr, ":15020")
	def(&c.AdminAddr, "127.0.0.1:15000")
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.WriteIdleTimeout <= 0 {
		c.WriteIdleTimeout = 5 * time.Minute
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	switch c.AccessLog {
	case "":
		c.AccessLog = "stdout"
	case "stdout", "stderr", "off":
	default:
		return fmt.Errorf("sidecar: access log %q: use stdout, stderr or off", c.AccessLog)
	}
	return nil
}

// accessLogger returns the logger for c.AccessLog; nil when off.
func (c *Config) accessLogger() *slog.Logger {
	switch c.AccessLog {
	case "stdout":
		return slog.New(slog.NewJSONHandler(os.Stdout, nil))
	case "stderr":
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return nil
}

// Run runs the sidecar until ctx is done, then stops accepting and gives
// in-flight requests Drain to finish. It reports ready on HealthAddr only
// once a config and a certificate are loaded.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	appProbes, err := parseAppProbes(cfg.AppProbes)
	if err != nil {
		return err
	}
	var first *meshpb.ProxyConfig
	var self identity.ID
	if cfg.ControlPlane == "" {
		var err error
		if first, err = controlclient.Load(cfg.ConfigFile); err != nil {
			return err
		}
		self, _ = identity.Parse(first.GetWorkload().GetIdentity())
	} else {
		self, _ = identity.Parse(cfg.Identity)
	}
	store := &meshtls.Store{}
	dialer := MarkedDialer(cfg.Mark)
	metrics := telemetry.New(cfg.Cluster)
	metrics.CountFunc("trellis_proxy_panics_total", "Panics of connection and request handlers, each recovered: the connection closed, the sidecar serving on.",
		func() float64 { return float64(panics.Load()) })
	metrics.CountFunc("trellis_proxy_peer_metadata_mismatches_total", "Peers whose metadata named another namespace than their certificate; their labels are what the certificate proves.",
		func() float64 { return float64(peerMismatches.Load()) })
	tracing, err := cfg.tracing(ctx, store, dialer, self)
	if err != nil {
		return err
	}
	defer func() {
		flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = tracing.Shutdown(flush)
	}()
	out := NewOutbound(store, dialer)
	out.Metrics, out.Tracing = metrics, tracing
	in := NewInbound(store, self.TrustDomain())
	in.HoldUntilConfigured()
	in.AppAddr = cfg.AppAddr
	in.Metrics, in.Tracing = metrics, tracing
	accessLog := cfg.accessLogger()
	out.AccessLog, in.AccessLog = accessLog, accessLog
	out.WriteIdleTimeout, in.WriteIdleTimeout = cfg.WriteIdleTimeout, cfg.WriteIdleTimeout
	var current atomic.Pointer[meshpb.ProxyConfig]
	apply := func(c *meshpb.ProxyConfig) {
		out.Update(c)
		in.SetPolicy(c.GetInbound())
		in.SetConfig(c)
		current.Store(c)
		slog.Info("config applied", "version", c.GetVersion(), "services", len(c.GetServices()))
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Stop the config source first, then wait for it: returning early
	// (a port taken) must not wait on a source that runs until cancelled.
	defer func() { cancel(); wg.Wait() }()
	var sourceErr error
	if cfg.ControlPlane != "" {
		ctl, err := cfg.control(self, store, dialer, func(c *meshpb.ProxyConfig) error { apply(c); return nil })
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sourceErr = ctl.Run(ctx); sourceErr != nil {
				cancel() // nothing to serve with: let the runtime restart us with a fresh token
			}
		}()
	} else {
		apply(first)
		cfg.watchFiles(ctx, &wg, store, func(c *meshpb.ProxyConfig) {
			if c.GetVersion() != current.Load().GetVersion() {
				apply(c)
			}
		})
	}

	outSrv := NewOutboundServer(out, store, dialer)
	outSrv.SetMaxConnections(cfg.MaxConnections)
	in.SetMaxConnections(cfg.MaxConnections)
	lns, err := listenAll(cfg.OutboundAddr, cfg.InboundAddr)
	if err != nil {
		outSrv.Close()
		in.Close()
		return err
	}
	for _, up := range cfg.Upstreams {
		ln, err := net.Listen("tcp", up.Listen.String())
		if err != nil {
			closeAll(lns)
			return fmt.Errorf("explicit upstream %s: %w", up, err)
		}
		lns = append(lns, ln)
		wg.Add(1)
		go func() { defer wg.Done(); outSrv.ServeExplicit(ln, up) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); accept(lns[0], outSrv.HandleConn) }()
	go func() {
		defer wg.Done()
		accept(lns[1], func(c net.Conn, dst netip.AddrPort) { in.HandleConn(c, dst.Port()) })
	}()

	var draining atomic.Bool
	health := safehttp.Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := appProbes[r.URL.Path]; ok {
			serveAppProbe(w, r, p)
			return
		}
		if r.URL.Path != "/healthz/ready" {
			http.NotFound(w, r)
			return
		}
		if draining.Load() {
			http.Error(w, "not ready: draining", http.StatusServiceUnavailable)
			return
		}
		if store.Current() == nil || current.Load() == nil {
			http.Error(w, "not ready: no certificate or no config yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	}))
	admin := safehttp.Server(adminMux(&current, store, out, in))
	statsMux := http.NewServeMux()
	statsMux.Handle("/stats/prometheus", metrics.Handler())
	stats := safehttp.Server(statsMux)
	servers := []*http.Server{health, admin, stats}
	for i, addr := range []string{cfg.HealthAddr, cfg.AdminAddr, cfg.MetricsAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll(lns)
			for _, srv := range servers[:i] {
				srv.Close()
			}
			outSrv.Close()
			in.Close()
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := servers[i]
		go func() { _ = srv.Serve(ln) }()
	}
	slog.Info("sidecar running", "identity", self, "outbound", cfg.OutboundAddr, "inbound", cfg.InboundAddr)
	<-ctx.Done()
	// Stop accepting, report unready, and give what is in flight cfg.Drain.
	draining.Store(true)
	closeAll(lns)
	slog.Info("draining", "for", cfg.Drain)
	dctx, cancelDrain := context.WithTimeout(context.Background(), cfg.Drain)
	defer cancelDrain()
	var outErr error
	var dwg sync.WaitGroup
	dwg.Add(1)
	go func() { defer dwg.Done(); outErr = outSrv.Shutdown(dctx) }()
	inErr := in.Shutdown(dctx)
	dwg.Wait()
	if outErr != nil || inErr != nil {
		slog.Warn("drain time over; closed the connections still open", "drain", cfg.Drain)
	}
	for _, s := range servers {
		_ = s.Close()
	}
	return sourceErr
}

// control builds the control-plane link of a sidecar.
func (c *Config) control(self identity.ID, store *meshtls.Store, dialer *net.Dialer, apply func(*meshpb.ProxyConfig) error) (*controlclient.Control, error) {
	if _, _, err := net.SplitHostPort(c.ControlPlane); err != nil {
		return nil, fmt.Errorf("sidecar: --control-plane %q: %w", c.ControlPlane, err)
	}
	serverID, err := identity.ForWorkload(self.TrustDomain(), "trellis-system", "trellis-control")
	if err != nil {
		return nil, err
	}
	return &controlclient.Control{
		Addr: c.ControlPlane, ServerID: serverID, BundleFile: c.ControlPlaneBundle, Identity: self,
		PodNamespace: c.PodNamespace, PodName: c.PodName, TokenFile: c.TokenFile, Store: store, Apply: apply,
		Dial: func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) },
	}, nil
}

// tracing builds the sidecar's tracing and its span exporter.
func (c *Config) tracing(ctx context.Context, store *meshtls.Store, dialer *net.Dialer, self identity.ID) (*telemetry.Tracing, error) {
	tc := telemetry.TracingConfig{Sampling: c.TraceSampling, Service: c.TraceService}
	if tc.Service == "" {
		tc.Service = c.PodName + "." + c.PodNamespace
	}
	dial := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) })
	var opts []otlptracegrpc.Option
	switch c.OTLPEndpoint {
	case "":
		return nil, nil // trace headers pass through untouched
	case "control-plane":
		if c.ControlPlane == "" {
			return nil, errors.New("sidecar: --otlp-endpoint control-plane needs --control-plane")
		}
		serverID, err := identity.ForWorkload(self.TrustDomain(), "trellis-system", "trellis-control")
		if err != nil {
			return nil, err
		}
		opts = []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(c.ControlPlane),
			otlptracegrpc.WithTLSCredentials(credentials.NewTLS(meshtls.ClientConfig(store, meshtls.Exactly(serverID))))}
	default:
		if _, _, err := net.SplitHostPort(c.OTLPEndpoint); err != nil {
			return nil, fmt.Errorf("sidecar: --otlp-endpoint %q: give control-plane or a collector's host:port: %w", c.OTLPEndpoint, err)
		}
		opts = []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(c.OTLPEndpoint), otlptracegrpc.WithInsecure()}
	}
	exp, err := otlptracegrpc.New(ctx, append(opts, otlptracegrpc.WithDialOption(dial))...)
	if err != nil {
		return nil, fmt.Errorf("sidecar: span exporter: %w", err)
	}
	tc.Exporter = exp
	return telemetry.NewTracing(tc), nil
}

// watchFiles follows the static config and certificate files.
func (c *Config) watchFiles(ctx context.Context, wg *sync.WaitGroup, store *meshtls.Store, onConfig func(*meshpb.ProxyConfig)) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = c.Certs.Watch(ctx, store, time.Second, func(err error) { slog.Error("certificates", "err", err) })
	}()
	go func() {
		defer wg.Done()
		src := &controlclient.FileSource{Path: c.ConfigFile, OnUpdate: onConfig,
			OnError: func(err error) { slog.Error("config rejected; keeping the previous one", "err", err) }}
		_ = src.Run(ctx)
	}()
}

func listenAll(addrs ...string) ([]net.Listener, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("listen on %s: %w", a, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll(lns []net.Listener) {
	for _, ln := range lns {
		ln.Close()
	}
}

// accept hands each redirected connection to handle with its original
// destination; connections made to the port directly are closed.
func accept(ln net.Listener, handle func(net.Conn, netip.AddrPort)) {
	acceptLoop(ln, func(c net.Conn) {
		dst, err := OriginalDst(c.(*net.TCPConn))
		if err != nil || dst.String() == c.LocalAddr().String() {
			slog.Debug("connection not redirected; closing", "from", c.RemoteAddr())
			c.Close()
			return
		}
		serveConn(c, func() { handle(c, dst) })
	})
}

// acceptLoop hands each connection ln accepts to take, until ln is closed.
// Other accept errors (out of file descriptors, say) are waited out.
func acceptLoop(ln net.Listener, take func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			slog.Warn("accept failed; retrying", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		take(c)
	}
}

// adminMux serves the admin endpoints: /config_dump (the ProxyConfig in
// force), /certs (identity and expiry), /clusters (endpoints and their
// state), /authz/observed (the access the inbound side let in, for
// `trellis authz suggest`; ?window=10m for the recent part only),
// /debug/pprof/ (profiles).
func adminMux(cfg *atomic.Pointer[meshpb.ProxyConfig], store *meshtls.Store, out *Outbound, in *Inbound) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", func(w http.ResponseWriter, _ *http.Request) {
		data, err := protojson.MarshalOptions{Multiline: true}.Marshal(cfg.Load())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(data)
	})
	mux.HandleFunc("/certs", func(w http.ResponseWriter, _ *http.Request) {
		m := store.Current()
		if m == nil {
			http.Error(w, "no certificate loaded", http.StatusServiceUnavailable)
			return
		}
		writeJSONTo(w, map[string]any{"identity": m.ID.String(), "notAfter": m.Cert.Leaf.NotAfter, "serial": m.Cert.Leaf.SerialNumber.String()})
	})
	mux.HandleFunc("/clusters", func(w http.ResponseWriter, _ *http.Request) {
		writeJSONTo(w, out.clusters())
	})
	mux.HandleFunc("/authz/observed", func(w http.ResponseWriter, r *http.Request) {
		var since time.Time
		if v := r.URL.Query().Get("window"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				http.Error(w, "window: give a positive duration such as 10m", http.StatusBadRequest)
				return
			}
			since = time.Now().Add(-d)
		}
		seen, overflow := in.Observed(since)
		writeJSONTo(w, map[string]any{"access": seen, "overflow": overflow})
	})
	// Go's profiler, for `go tool pprof http://127.0.0.1:15000/debug/pprof/profile`
	// from inside the pod (the admin port is never reachable from outside).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func writeJSONTo(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// RegisterFlags defines c's fields as flags on fs, for the binaries that run
// a sidecar (trellis-proxy, and `trellis proxy` in one-host mode).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ControlPlane, "control-plane", "", "control plane address (host:15012); replaces --config, --cert, --key and --bundle")
	fs.StringVar(&c.ControlPlaneBundle, "control-plane-bundle", "", "roots (PEM) that verify the control plane at first")
	fs.StringVar(&c.Identity, "identity", "", "the workload's SPIFFE ID (with --control-plane)")
	fs.StringVar(&c.PodNamespace, "pod-namespace", "", "the sidecar's pod namespace (with --control-plane)")
	fs.StringVar(&c.PodName, "pod-name", "", "the sidecar's pod name (with --control-plane)")
	fs.StringVar(&c.TokenFile, "token-file", "", "file holding the one-time bootstrap token (with --control-plane)")
	fs.StringVar(&c.ConfigFile, "config", "", "ProxyConfig file (protobuf JSON), watched for changes")
	fs.StringVar(&c.Certs.Cert, "cert", "", "SVID certificate chain (PEM), watched")
	fs.StringVar(&c.Certs.Key, "key", "", "SVID private key (PEM), watched")
	fs.StringVar(&c.Certs.Bundle, "bundle", "", "trust bundle (PEM roots), watched")
	fs.StringVar(&c.OutboundAddr, "outbound", ":15001", "outbound capture listener")
	fs.StringVar(&c.InboundAddr, "inbound", ":15006", "inbound capture listener")
	fs.StringVar(&c.HealthAddr, "health", ":15021", "readiness listener (/healthz/ready)")
	fs.StringVar(&c.MetricsAddr, "metrics", ":15020", "metrics listener (/stats/prometheus)")
	fs.StringVar(&c.AdminAddr, "admin", "127.0.0.1:15000", "admin listener (localhost only)")
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "how long in-flight requests may finish after SIGTERM")
	fs.DurationVar(&c.WriteIdleTimeout, "write-idle-timeout", 5*time.Minute, "cut off a response the client stops reading for this long")
	fs.IntVar(&c.MaxConnections, "max-connections", DefaultMaxConnections, "connections each side (outbound, inbound) may hold open at once")
	fs.IntVar(&c.Mark, "mark", 0, "socket mark of the proxy's own connections, for capture rules set up with --proxy-mark (needs CAP_NET_ADMIN); 0: none, the rules let the proxy through by its uid")
	fs.Func("upstream", "explicit listener NAME.NAMESPACE:PORT=127.0.0.1:LOCALPORT for hosts without the redirect rules (repeatable)", func(v string) error {
		up, err := ParseUpstream(v)
		if err == nil {
			c.Upstreams = append(c.Upstreams, up)
		}
		return err
	})
	fs.StringVar(&c.AppProbes, "app-probes", os.Getenv(AppProbesEnv), "the app's probes the health listener runs at /app-health/CONTAINER/KIND (JSON, as the injector writes it; default $"+AppProbesEnv+")")
	fs.StringVar(&c.AppAddr, "app-address", os.Getenv("POD_IP"), "the address the inbound reaches the app at: the pod's (default $POD_IP), so loopback-only listeners stay private; 127.0.0.1 for apps that listen on loopback only")
	fs.StringVar(&c.Cluster, "cluster", "one-host", "the cluster name in metrics (source_cluster, destination_cluster)")
	fs.StringVar(&c.AccessLog, "access-log", "stdout", "where the access log goes (JSON lines): stdout, stderr or off")
	fs.Float64Var(&c.TraceSampling, "trace-sampling", 1, "percentage of new traces recorded, as Istio's default 1 (a request that comes with a trace keeps its decision)")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", "", "where spans go over OTLP/gRPC: control-plane, or a collector's host:port (plaintext); empty: nowhere")
	fs.StringVar(&c.TraceService, "trace-service", "", "service.name of the spans (default POD.NAMESPACE)")
}
