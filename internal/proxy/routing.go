package proxy

import (
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/proxy/h2"
	routing "github.com/trellis-mesh/trellis/internal/route"
)

// svcPort names a service port the way a route's backends do; with a
// subset, the endpoints of that subset of the service there.
type svcPort struct {
	namespace, name string
	port            uint16
	subset          string
}

// backendPort is where a route's backend b sends.
func backendPort(b routing.Backend) svcPort {
	return svcPort{b.Namespace, b.Name, uint16(b.Port), b.Subset}
}

// compileRoutes gives each service port of t the table of the routes in
// cfg attached to it, as the workload's namespace sees them (its own
// consumer routes before the producer's), and adds to t the route of
// each subset a table sends to, made by subset (nil: the subset does not
// exist, and the requests sent there get 500). Only those: a
// DestinationRule's subsets cost a proxy nothing until its routes use
// them. Validate has refused a config whose routes do not decode.
func (t *routeTable) compileRoutes(cfg *meshpb.ProxyConfig, subset func(routing.Backend) *route) {
	rs, err := routing.FromProto(cfg.GetRoutes())
	if err != nil || rs.Empty() {
		return
	}
	rc := RouteConfig(cfg)
	client := cfg.GetWorkload().GetNamespace()
	var routed []*route
	for key, r := range t.byService { // only service ports yet
		attached := rs.AttachedTo(key.namespace, key.name)
		if attached.Empty() {
			continue
		}
		target := routing.Target{Namespace: key.namespace, Name: key.name, Port: int32(key.port), ClientNamespace: client}
		if table := routing.Compile(target, attached, rc); !table.Empty() {
			r.table = table
			routed = append(routed, r)
		}
	}
	for _, r := range routed {
		for _, b := range r.table.Backends() {
			if k := backendPort(b); k.subset != "" && t.byService[k] == nil {
				if sr := subset(b); sr != nil {
					t.byService[k] = sr
				}
			}
		}
	}
	for _, r := range routed {
		r.resilient = r.resilient || r.table.Resilient() || slices.ContainsFunc(r.table.Backends(), func(b routing.Backend) bool {
			to := t.byService[backendPort(b)]
			return to != nil && to.circuit != nil
		})
	}
}

// RouteConfig is what routes attach to and send to, as a proxy with cfg
// sees it: the services of its config, with their subsets.
func RouteConfig(cfg *meshpb.ProxyConfig) routing.Config {
	var rc routing.Config
	for _, s := range cfg.GetServices() {
		svc := routing.Service{Namespace: s.GetNamespace(), Name: s.GetName(), Rule: s.GetTrafficPolicy().GetSource()}
		for _, sub := range s.GetSubsets() {
			svc.Subsets = append(svc.Subsets, sub.GetName())
		}
		for _, p := range s.GetPorts() {
			svc.Ports = append(svc.Ports, routing.Port{Name: p.GetName(), Port: int32(p.GetPort())})
		}
		rc.Services = append(rc.Services, svc)
	}
	return rc
}

// routed is where a request to service port r goes: with no route
// attached, to r itself (and a zero decision); otherwise to the service
// port its matching rule picked by weight. A decision with a Status is
// answered by the proxy itself (no rule matched, an invalid backend, a
// redirect), and r is returned with it.
func (t *routeTable) routed(r *route, req *routing.Request) (*route, routing.Decision) {
	if r.table == nil {
		return r, routing.Decision{}
	}
	d := r.table.Route(req, rand.Uint64())
	if !d.Routed || d.Status != 0 {
		return r, d
	}
	b := t.byService[backendPort(d.Backend)]
	if b == nil { // the control plane sent a route to a service (or subset) it did not send
		d.Status, d.GRPCStatus = http.StatusInternalServerError, 14
		return r, d
	}
	return b, d
}

// routeRefusal is the flag and reason a proxy's own answer to a routed
// request is recorded with.
func routeRefusal(d routing.Decision) (flag, reason string) {
	switch {
	case d.Fault:
		return "FI", "aborted by the fault injection of " + d.Route.String()
	case d.Location != "":
		return "", "redirected to " + d.Location + " by " + d.Route.String()
	case d.Status == http.StatusBadRequest:
		return "DPE", "the route redirects, and the request's Host or path cannot go in a Location header"
	case d.Status == http.StatusNotFound:
		return "NR", "no rule of the routes attached to the service matches the request"
	}
	return "NR", "the rule that matched has no backend that can take the request: see the route's status"
}

// routeAnswer is the response head, ending the stream, of the proxy's
// own answer to a routed request over HTTP/2 when it is a redirect (with
// its Location) or a gRPC call's refusal (trailers-only, with the
// decision's grpc-status); nil for a refusal with a body.
func routeAnswer(d routing.Decision, grpc bool, flag, reason string) []h2.Field {
	switch {
	case d.Location != "":
		return []h2.Field{{Name: ":status", Value: strconv.Itoa(d.Status)}, {Name: "location", Value: d.Location},
			{Name: "content-length", Value: "0"}}
	case grpc && d.GRPCStatus != 0:
		return grpcAnswer(d.GRPCStatus, flag, reason)
	}
	return nil
}

// grpcAnswer is the head of the proxy's own trailers-only answer to a
// gRPC call, as failGRPC writes it on net/http's path.
func grpcAnswer(status int, flag, reason string) []h2.Field {
	return []h2.Field{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: strconv.Itoa(status)}, {Name: "grpc-message", Value: grpcMessage("trellis proxy: " + reason)},
		{Name: strings.ToLower(flagsHeader), Value: flag}}
}

// applyRoute makes fields, a request's HTTP/2 header section, what the
// decision sends to the backend: its header changes, and its rewritten
// path (the query kept) and authority.
func applyRoute(fields []h2.Field, d routing.Decision) []h2.Field {
	for i := range fields {
		switch {
		case fields[i].Name == ":path" && d.Path != "":
			_, query, _ := strings.Cut(fields[i].Value, "?")
			fields[i].Value = d.Path
			if query != "" {
				fields[i].Value += "?" + query
			}
		case fields[i].Name == ":authority" && d.Host != "":
			fields[i].Value = d.Host
		}
	}
	return editFields(d.RequestHeaders).apply(fields)
}

// fieldEdit is what a route's header changes do to a header section:
// the names whose values it drops (lower case) and the fields it adds.
// Applied in one pass, it does what the changes do one after another: a
// set or remove drops the values before it, an add appends.
type fieldEdit struct {
	drop map[string]bool
	add  []h2.Field
}

// editFields is the edit of ops; the zero fieldEdit, without ops.
func editFields(ops routing.HeaderOps) fieldEdit {
	if len(ops) == 0 {
		return fieldEdit{}
	}
	e := fieldEdit{drop: map[string]bool{}}
	for _, op := range ops {
		name := strings.ToLower(op.Name)
		if op.Action != routing.HeaderAdd {
			e.drop[name] = true
			e.add = slices.DeleteFunc(e.add, func(f h2.Field) bool { return f.Name == name })
		}
		if op.Action != routing.HeaderRemove {
			e.add = append(e.add, h2.Field{Name: name, Value: op.Value})
		}
	}
	return e
}

// apply is fields without those e drops, and with those it adds.
func (e fieldEdit) apply(fields []h2.Field) []h2.Field {
	if e.drop == nil {
		return fields
	}
	out := fields[:0]
	for _, f := range fields {
		if !e.drop[f.Name] {
			out = append(out, f)
		}
	}
	return append(out, e.add...)
}

// fieldsView is a request's header lookup for routes over its HTTP/2
// header section (names in lower case).
func fieldsView(fields []h2.Field) func(name string) []string {
	return func(name string) []string {
		var vs []string
		for _, f := range fields {
			if !strings.HasPrefix(f.Name, ":") && strings.EqualFold(f.Name, name) {
				vs = append(vs, f.Value)
			}
		}
		return vs
	}
}

// httpView is what routes see of a request net/http serves.
func httpView(r *http.Request) *routing.Request {
	path, err := NormalizePath(r.URL.EscapedPath())
	if err != nil {
		path = r.URL.EscapedPath() // checkRequest has refused it
	}
	return &routing.Request{GRPC: protocolOf(r) == "grpc", Method: r.Method, Host: r.Host, Path: path,
		RawQuery: r.URL.RawQuery, Header: r.Header.Values}
}

// applyRouteHTTP makes r what the decision sends to the backend (see
// applyRoute).
func applyRouteHTTP(r *http.Request, d routing.Decision) {
	d.RequestHeaders.Apply(r.Header)
	if d.Path != "" {
		r.URL.RawPath = d.Path
		if p, err := url.PathUnescape(d.Path); err == nil {
			r.URL.Path = p
		}
	}
	if d.Host != "" {
		r.Host = d.Host
	}
}
