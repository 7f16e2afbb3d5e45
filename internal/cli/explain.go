package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/localmesh"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy"
	routing "github.com/trellis-mesh/trellis/internal/route"
)

// maxExplained bounds the endpoints whose sidecars explain asks: each is
// a read of a sidecar's config.
const maxExplained = 8

// newExplainCmd says what the mesh would do with one request from a pod:
// the route its sidecar picks, the endpoints and how they are reached,
// and, at each endpoint's sidecar, the JWT check and the authorization
// policy (and rule) that decide, from the configs the sidecars run.
func newExplainCmd(o *options) *cobra.Command {
	var namespace, method string
	var headers []string
	var cluster clusterFlags
	cmd := &cobra.Command{
		Use:   "explain POD URL [-n NAMESPACE] [-X METHOD] [-H 'NAME: VALUE']... [--kubernetes]",
		Short: "Say what the mesh does with a request from a pod: route, endpoints, mTLS, and the policy that decides",
		Long: `Say what the mesh does with a request from a pod: the service and port its
sidecar routes it to, the endpoints and how each is reached (mutual TLS and the
identity expected, or plaintext), and at each endpoint's sidecar the inbound mTLS
mode, the JWT check (RequestAuthentication) and the AuthorizationPolicy and rule
that decide, and why. It reads the configs the sidecars run; it sends nothing.

  trellis explain -n client-allow client http://demo-graph-alpha.db:8080/query -X POST`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := explainRequest(args[1], method, headers)
			if err != nil {
				return err
			}
			sc, err := newSidecars(o, &cluster)
			if err != nil {
				return err
			}
			return (&explainer{out: o.out, sidecars: sc}).explain(cmd.Context(), namespace, args[0], req)
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "the calling pod's namespace")
	cmd.Flags().StringVarP(&method, "request", "X", "GET", "the request's method")
	cmd.Flags().StringArrayVarP(&headers, "header", "H", nil, "a request header, 'NAME: VALUE' (repeatable), e.g. an Authorization bearer token")
	cluster.register(cmd)
	return cmd
}

// explainRequest is the request to explain, as a client would send it.
func explainRequest(raw, method string, headers []string) (*http.Request, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%q is not a URL: write http://SERVICE.NAMESPACE:PORT/PATH", raw)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("%q: the app speaks plain HTTP to its sidecar (which adds the mTLS): write http://", raw)
	}
	req, err := http.NewRequest(strings.ToUpper(method), u.String(), nil)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("header %q: write 'NAME: VALUE'", h)
		}
		req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	return req, nil
}

// explainer reads what it explains from pods and their sidecars.
type explainer struct {
	out io.Writer
	*sidecars
}

// sidecars reads pods and their sidecars' admin APIs: on this host
// through each pod's network namespace, on a cluster by a port-forward
// through the API server.
type sidecars struct {
	pods interface {
		Pods(context.Context) ([]localmesh.PodStatus, error)
	}
	admin func(ctx context.Context, ns, pod, path string) ([]byte, error)
}

func newSidecars(o *options, cluster *clusterFlags) (*sidecars, error) {
	if !cluster.kubernetes {
		return &sidecars{pods: o.client(), admin: func(ctx context.Context, ns, pod, path string) ([]byte, error) {
			nsName, err := podNetns(ctx, o, ns, pod)
			if err != nil {
				return nil, err
			}
			return adminGet(nsName, path)
		}}, nil
	}
	kc, err := cluster.connect()
	if err != nil {
		return nil, err
	}
	return &sidecars{pods: &clusterLister{kc: kc, trellisNS: cluster.namespace, warn: terminalSafe(o.err)},
		admin: func(ctx context.Context, ns, pod, path string) ([]byte, error) {
			get, stop, err := clusterAdmin(ctx, cluster, ns, pod, io.Discard)
			if err != nil {
				return nil, err
			}
			defer stop()
			return get(path)
		}}, nil
}

// config is the ProxyConfig pod's sidecar runs.
func (s *sidecars) config(ctx context.Context, ns, pod string) (*meshpb.ProxyConfig, error) {
	data, err := s.admin(ctx, ns, pod, "/config_dump")
	if err != nil {
		return nil, err
	}
	cfg := &meshpb.ProxyConfig{}
	if err := protojson.Unmarshal(data, cfg); err != nil {
		return nil, fmt.Errorf("sidecar config: %w", err)
	}
	return cfg, nil
}

func (e *explainer) explain(ctx context.Context, ns, pod string, req *http.Request) error {
	pods, err := e.pods.Pods(ctx)
	if err != nil {
		return err
	}
	byIP := map[string]localmesh.PodStatus{}
	var src *localmesh.PodStatus
	for i, p := range pods {
		byIP[p.IP] = p
		if p.Namespace == ns && p.Name == pod {
			src = &pods[i]
		}
	}
	if src == nil {
		return fmt.Errorf("pod %s/%s not found (see `trellis get pods -n %s`)", ns, pod, ns)
	}
	cfg, err := e.config(ctx, ns, pod)
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w; explain follows a request from a pod with a sidecar", ns, pod, err)
	}
	out := termWriter{terminalSafe(e.out)}
	out.line("request", "%s %s from %s/%s as %s", req.Method, req.URL, ns, pod, cfg.GetWorkload().GetIdentity())
	svc, port, err := route(cfg, ns, req.URL)
	if err != nil {
		out.line("route", "%v", err)
		return nil
	}
	srcIP, _ := netip.ParseAddr(src.IP)
	backends, ok := routes(out, cfg, ns, svc, port, req)
	if !ok {
		return nil
	}
	for _, b := range backends {
		e.explainPort(ctx, out, byIP, cfg, srcIP, req, b.svc, b.port)
	}
	return nil
}

// backendPort is a service port a request may go to.
type backendPort struct {
	svc  *meshpb.Service
	port *meshpb.ServicePort
}

// routes says where the routes attached to svc's port send req, as the
// caller's sidecar applies them, and returns the service ports it may go
// to; svc's port itself when no route is attached. It returns false when
// the sidecar answers the request itself.
func routes(out termWriter, cfg *meshpb.ProxyConfig, callerNS string, svc *meshpb.Service, port *meshpb.ServicePort, req *http.Request) ([]backendPort, bool) {
	rs, err := routing.FromProto(cfg.GetRoutes())
	attached := rs.AttachedTo(svc.GetNamespace(), svc.GetName())
	if err != nil || attached.Empty() || port.GetProtocol() == meshpb.Protocol_PROTOCOL_TCP {
		return []backendPort{{svc, port}}, true
	}
	target := routing.Target{Namespace: svc.GetNamespace(), Name: svc.GetName(), Port: int32(port.GetPort()), ClientNamespace: callerNS}
	table := routing.Compile(target, attached, proxy.RouteConfig(cfg))
	if table.Empty() {
		out.line("routes", "none of the routes attached to %s/%s applies to this port and client (see `trellis get httproutes,virtualservices`)", svc.GetNamespace(), svc.GetName())
		return []backendPort{{svc, port}}, true
	}
	d, shares := table.Explain(&routing.Request{GRPC: strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc"),
		Method: req.Method, Host: req.Host, Path: req.URL.Path, RawQuery: req.URL.RawQuery, Header: req.Header.Values})
	if d.Status != 0 {
		by := ""
		if d.Route.Name != "" {
			by = fmt.Sprintf(" (%s %s/%s rule %d)", d.Route.Kind, d.Route.Namespace, d.Route.Name, d.Rule)
		}
		out.line("routes", "the sidecar answers %d itself%s", d.Status, by)
		return nil, false
	}
	var parts []string
	var to []backendPort
	for _, sh := range shares {
		parts = append(parts, fmt.Sprintf("%.0f%% to %s", 100*sh.Share, sh.Backend))
		if sh.Share == 0 || sh.Invalid {
			continue
		}
		for _, s := range cfg.GetServices() {
			if s.GetNamespace() == sh.Backend.Namespace && s.GetName() == sh.Backend.Name {
				for _, p := range s.GetPorts() {
					if int32(p.GetPort()) == sh.Backend.Port {
						to = append(to, subsetPort(s, p, sh.Backend.Subset))
					}
				}
			}
		}
	}
	out.line("routes", "service %s/%s port %d: %s %s/%s rule %d sends %s", svc.GetNamespace(), svc.GetName(), port.GetPort(),
		d.Route.Kind, d.Route.Namespace, d.Route.Name, d.Rule, strings.Join(parts, ", "))
	return to, true
}

// subsetPort is port p of s as a route's backend naming subset sees it:
// the subset's endpoints there, balanced by its policy; p itself for no
// subset.
func subsetPort(s *meshpb.Service, p *meshpb.ServicePort, subset string) backendPort {
	sub := s.SubsetNamed(subset)
	if subset == "" || sub == nil {
		return backendPort{s, p}
	}
	svc := &meshpb.Service{Namespace: s.GetNamespace(), Name: s.GetName(), Vip: s.GetVip(), LoadBalancing: sub.GetLoadBalancing(),
		TrafficPolicy: sub.GetTrafficPolicy()}
	return backendPort{svc, &meshpb.ServicePort{Port: p.GetPort(), Protocol: p.GetProtocol(), Name: p.GetName(), Endpoints: sub.Select(p.GetEndpoints())}}
}

// explainPort explains the request at each endpoint of one service port.
func (e *explainer) explainPort(ctx context.Context, out termWriter, byIP map[string]localmesh.PodStatus, cfg *meshpb.ProxyConfig, srcIP netip.Addr,
	req *http.Request, svc *meshpb.Service, port *meshpb.ServicePort) {
	out.line("route", "service %s/%s port %d (%s), %s over %d endpoint(s)", svc.GetNamespace(), svc.GetName(), port.GetPort(),
		protocolName(port.GetProtocol()), strings.ToLower(strings.TrimPrefix(svc.GetLoadBalancing().String(), "LOAD_BALANCING_")), len(port.GetEndpoints()))
	if len(port.GetEndpoints()) == 0 {
		out.line("", "no ready endpoint: the sidecar answers 503 (no healthy upstream) at once")
	}
	for i, ep := range port.GetEndpoints() {
		if i == maxExplained {
			out.line("", "(%d more endpoints not shown)", len(port.GetEndpoints())-i)
			break
		}
		addr := net.JoinHostPort(ep.GetAddress(), strconv.Itoa(int(ep.GetPort())))
		dst, known := byIP[ep.GetAddress()]
		name := cmp.Or(ep.GetNamespace()+"/"+ep.GetWorkload(), addr)
		if known {
			name = dst.Namespace + "/" + dst.Name
		}
		if ep.GetIdentity() == "" {
			out.line("endpoint", "%s %s: plaintext (no sidecar there): no mTLS, no authorization", addr, name)
			continue
		}
		out.line("endpoint", "%s %s: mutual TLS, expecting %s", addr, name, ep.GetIdentity())
		if !known {
			out.line("", "not a pod this mesh lists: its sidecar's policies are not known here")
			continue
		}
		dcfg, err := e.config(ctx, dst.Namespace, dst.Name)
		if err != nil {
			out.line("", "its sidecar's config: %v", err)
			continue
		}
		out.line("  inbound", "%s", inboundMode(dcfg.GetInbound(), ep.GetPort()))
		e.decide(out, req, cfg, srcIP, ep, dcfg)
	}
}

// decide runs the destination sidecar's JWT rules and authorization
// policies over the request, as it would.
func (e *explainer) decide(out termWriter, req *http.Request, src *meshpb.ProxyConfig, srcIP netip.Addr, ep *meshpb.Endpoint, dst *meshpb.ProxyConfig) {
	r := req.Clone(req.Context())
	var auth *authz.Auth
	if rules, keys := authn.FromProto(dst.GetAuthentication()); len(rules) > 0 {
		a, err := authn.Compile(rules, keys)
		if err != nil {
			out.line("  jwt", "the rules do not compile: %v", err)
			return
		}
		res, err := a.Authenticate(r, time.Now())
		if err == nil {
			res.Apply(r) // as the sidecar: the token out, its headers in
		}
		switch {
		case err != nil:
			out.line("  jwt", "401: %v", err)
			return
		case res.Auth == nil:
			out.line("  jwt", "no token: the request goes on unauthenticated (no request principal)")
		default:
			auth = res.Auth
			out.line("  jwt", "verified: request principal %s", auth.Principal)
		}
	}
	policies := authz.FromProto(dst.GetAuthorization())
	if len(policies) == 0 {
		out.line("  authz", "allowed: no AuthorizationPolicy applies to %s/%s", dst.GetWorkload().GetNamespace(), dst.GetWorkload().GetName())
		return
	}
	engine, err := authz.Compile(policies)
	if err != nil {
		out.line("  authz", "the policies do not compile (the sidecar refuses every request): %v", err)
		return
	}
	path, err := proxy.NormalizePath(r.URL.EscapedPath())
	if err != nil {
		out.line("  authz", "400 before any policy: %v", err)
		return
	}
	dstIP, _ := netip.ParseAddr(ep.GetAddress())
	principal := strings.TrimPrefix(src.GetWorkload().GetIdentity(), "spiffe://")
	header := func(name string) []string {
		if strings.EqualFold(name, "host") || name == ":authority" {
			return []string{r.URL.Host}
		}
		return r.Header.Values(name)
	}
	d := engine.Decide(&authz.Request{HTTP: true, Principal: principal, Namespace: src.GetWorkload().GetNamespace(),
		SourceIP: srcIP, RemoteIP: srcIP, DestIP: dstIP, DestPort: int(ep.GetPort()),
		Host: r.URL.Host, Method: r.Method, Path: path, Header: header, Auth: auth})
	var names []string
	for _, p := range policies {
		names = append(names, fmt.Sprintf("%s/%s (%s%s)", p.Namespace, p.Name, cmp.Or(string(p.Spec.Action), "ALLOW"), map[bool]string{true: ", dry run"}[p.DryRun]))
	}
	out.line("  policies", "%s", strings.Join(names, ", "))
	switch {
	case d.Allowed && d.Policy != "":
		out.line("  authz", "allowed by %s, rule %d", d.Policy, d.Rule)
	case d.Allowed:
		out.line("  authz", "allowed: no DENY matches and no ALLOW policy applies")
	case d.Policy != "":
		out.line("  authz", "denied by %s, rule %d: 403 RBAC: access denied", d.Policy, d.Rule)
	default:
		out.line("  authz", "denied: ALLOW policies apply and none of their rules matches: 403 RBAC: access denied")
	}
	for _, a := range d.Audited {
		out.line("  audit", "recorded by %s", a)
	}
	if s := d.DryRun; s != nil && s.Allowed != d.Allowed {
		out.line("  dry run", "with the dry-run policies enforced it would be %s (%s)", verdict(s.Allowed), cmp.Or(s.Policy, "no ALLOW rule matches"))
	}
}

func verdict(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}

// route finds the service and port a sidecar routes u to: by VIP, or by
// the name NAME[.NAMESPACE[.svc[.cluster.local]]] (the caller's namespace
// when none is given).
func route(cfg *meshpb.ProxyConfig, callerNS string, u *url.URL) (*meshpb.Service, *meshpb.ServicePort, error) {
	host := strings.ToLower(u.Hostname())
	port := 80
	if p := u.Port(); p != "" {
		port, _ = strconv.Atoi(p)
	}
	name, ns := host, callerNS
	if _, err := netip.ParseAddr(host); err != nil {
		parts := strings.SplitN(strings.TrimSuffix(strings.TrimSuffix(host, ".cluster.local"), ".svc"), ".", 2)
		name = parts[0]
		if len(parts) == 2 {
			ns = parts[1]
		}
	}
	for _, svc := range cfg.GetServices() {
		if svc.GetVip() != host && (svc.GetName() != name || svc.GetNamespace() != ns) {
			continue
		}
		for _, p := range svc.GetPorts() {
			if int(p.GetPort()) == port {
				return svc, p, nil
			}
		}
		return nil, nil, fmt.Errorf("service %s/%s has no port %d: the sidecar passes the connection through, outside the mesh", svc.GetNamespace(), svc.GetName(), port)
	}
	return nil, nil, fmt.Errorf("%s is no service this pod's sidecar knows: the request leaves the mesh unchanged (see `trellis proxy-config` for what it knows)", u.Host)
}

func protocolName(p meshpb.Protocol) string {
	if p == meshpb.Protocol_PROTOCOL_UNSPECIFIED {
		return "detected"
	}
	return strings.ToLower(strings.TrimPrefix(p.String(), "PROTOCOL_"))
}

func inboundMode(p *meshpb.InboundPolicy, port uint32) string {
	mode, ok := p.GetPortModes()[port]
	if !ok {
		mode = p.GetMode()
	}
	if mode == meshpb.MTLSMode_MTLS_MODE_STRICT {
		return "STRICT: only mutual TLS from the mesh is accepted"
	}
	return "PERMISSIVE: mutual TLS, and plaintext from outside the mesh"
}

// termWriter prints explain's labelled lines.
type termWriter struct{ w io.Writer }

func (t termWriter) line(label, format string, args ...any) {
	fmt.Fprintf(t.w, "%-10s %s\n", label, fmt.Sprintf(format, args...))
}
