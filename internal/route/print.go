package route

import (
	"fmt"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// String prints the table for people and golden files: the target, then
// every match in precedence order with what its rule does. The format is
// not stable.
func (t *Table) String() string {
	if t == nil {
		return "no table\n"
	}
	var b strings.Builder
	kind, rules := "HTTPRoutes", "rules"
	switch {
	case t.grpc:
		kind = "GRPCRoutes"
	case len(t.entries) > 0 && t.entries[0].r.src.ref.Kind == catalog.KindVirtualService:
		kind, rules = "a VirtualService, in order", "http"
	}
	fmt.Fprintf(&b, "Service %s/%s port %d, clients in %q: %d matches of %s\n", t.target.Namespace, t.target.Name, t.target.Port,
		t.target.ClientNamespace, len(t.entries), kind)
	for i, e := range t.entries {
		fmt.Fprintf(&b, "%d. %s %s[%d]: %s\n", i+1, e.r.src.ref, rules, e.r.index, e.m.describe(t.grpc))
		if i+1 < len(t.entries) && t.entries[i+1].r == e.r {
			continue // the rule's actions follow its last match
		}
		e.r.describe(&b)
	}
	return b.String()
}

func (m *match) describe(grpc bool) string {
	var parts []string
	if grpc {
		if !m.anyService {
			parts = append(parts, "service "+m.service.String())
		}
		if !m.anyMethod {
			parts = append(parts, "method "+m.grpcMethod.String())
		}
	} else {
		kind := map[pathKind]string{pathExact: "Exact", pathPrefix: "PathPrefix", pathRegex: "RegularExpression"}[m.kind]
		p := m.path.exact
		if m.kind == pathPrefix && p == "" {
			p = "/"
		}
		parts = append(parts, fmt.Sprintf("path %s %q", kind, p))
		if m.method != "" {
			parts = append(parts, "method "+m.method)
		}
	}
	for _, h := range m.headers {
		parts = append(parts, fmt.Sprintf("header %s=%s", h.name, h.value))
	}
	for _, q := range m.query {
		parts = append(parts, fmt.Sprintf("query %s=%s", q.name, q.value))
	}
	if len(parts) == 0 {
		return "any call"
	}
	return strings.Join(parts, ", ")
}

func (r *rule) describe(b *strings.Builder) {
	line := func(format string, a ...any) { fmt.Fprintf(b, "   "+format+"\n", a...) }
	if len(r.reqHeaders) > 0 {
		line("request headers: %s", r.reqHeaders)
	}
	if len(r.respHeaders) > 0 {
		line("response headers: %s", r.respHeaders)
	}
	if r.rewrite != nil || r.rewriteHost != "" {
		line("rewrite: path %s, host %q", r.rewrite, r.rewriteHost)
	}
	if rd := r.redirect; rd != nil {
		line("redirect %d: scheme %q, host %q, port %d, path %s", rd.status, rd.scheme, rd.host, rd.port, rd.path)
	}
	for _, m := range r.mirrors {
		line("mirror to %s, %d/%d of requests", m.Backend, m.num, m.den)
	}
	for _, be := range r.backends {
		s := fmt.Sprintf("backend %s, weight %d", be.Backend, be.weight)
		if be.invalid {
			s += ", invalid: 500"
		}
		if own := be.reqHeaders[len(r.reqHeaders):]; len(own) > 0 {
			s += fmt.Sprintf(", request headers %s", own)
		}
		if own := be.respHeaders[len(r.respHeaders):]; len(own) > 0 {
			s += fmt.Sprintf(", response headers %s", own)
		}
		line("%s", s)
	}
	if len(r.backends) == 0 && r.redirect == nil {
		line("no backend: 500")
	}
	if t := r.timeouts; t != (Timeouts{}) {
		line("timeouts: request %s, backendRequest %s", fmtTimeout(t.Request), fmtTimeout(t.BackendRequest))
	}
	if rt := r.retry; rt != nil {
		line("retry: codes %s, attempts %d, backoff %s", codeRanges(rt.Codes), rt.Attempts, formatDuration(rt.Backoff))
	}
	if f := r.fault; f != nil && f.delay > 0 {
		line("fault: delay %s, %d per million", formatDuration(f.delay), f.delayShare)
	}
	if f := r.fault; f != nil && f.abortStatus != 0 {
		line("fault: abort %d (gRPC %d), %d per million", f.abortStatus, f.abortGRPC, f.abortShare)
	}
}

// codeRanges prints sorted status codes with runs as ranges: [500-599].
func codeRanges(codes []int) string {
	var s []string
	for i := 0; i < len(codes); {
		j := i
		for j+1 < len(codes) && codes[j+1] == codes[j]+1 {
			j++
		}
		if j-i >= 2 {
			s = append(s, fmt.Sprintf("%d-%d", codes[i], codes[j]))
		} else {
			for k := i; k <= j; k++ {
				s = append(s, fmt.Sprint(codes[k]))
			}
		}
		i = j + 1
	}
	return "[" + strings.Join(s, " ") + "]"
}

func fmtTimeout(d time.Duration) string {
	if d == 0 {
		return "unset"
	}
	return formatDuration(d)
}

// String formats a backend as namespace/name:port.
func (b Backend) String() string {
	if b.Subset != "" {
		return fmt.Sprintf("%s/%s:%d subset %s", b.Namespace, b.Name, b.Port, b.Subset)
	}
	return fmt.Sprintf("%s/%s:%d", b.Namespace, b.Name, b.Port)
}

// String formats the changes as "set X-A: b; remove X-C".
func (ops HeaderOps) String() string {
	s := make([]string, len(ops))
	for i, op := range ops {
		switch op.Action {
		case HeaderSet:
			s[i] = "set " + op.Name + ": " + op.Value
		case HeaderAdd:
			s[i] = "add " + op.Name + ": " + op.Value
		default:
			s[i] = "remove " + op.Name
		}
	}
	return strings.Join(s, "; ")
}

func (p *pathChange) String() string {
	switch {
	case p == nil:
		return "unchanged"
	case p.full:
		return fmt.Sprintf("ReplaceFullPath %q", p.value)
	}
	return fmt.Sprintf("ReplacePrefixMatch %q", p.source)
}
