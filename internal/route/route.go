// Package route compiles Gateway API HTTPRoutes and GRPCRoutes attached to
// a Service (the GAMMA mesh binding) into an immutable Table, and decides
// each request against it over a small Request view. It is pure: no I/O,
// no clock, no global randomness; the caller passes the random number a
// weighted choice uses.
//
// The control plane imports it to compile a Table per Service port (and
// per client namespace that has consumer routes) and to write route
// status: Validate yields each route's Accepted, ResolvedRefs and
// PartiallyInvalid conditions per parent. The proxy imports it to
// evaluate a Table for every request to a Service with routes.
//
// Semantics follow gateway.networking.k8s.io/v1 and GEP-1294 (mesh):
//
//   - A route attaches to a Service through a parentRef of group "" and
//     kind Service, to all its ports or to the one named by port or
//     sectionName. A route in the Service's namespace is a producer route
//     and applies to every client; one in another namespace is a consumer
//     route and applies only to clients in its own namespace, which then
//     use their namespace's routes instead of the producer's.
//   - A mesh infers nothing from hostnames (GEP-1294): they are accepted
//     and ignored.
//   - When GRPCRoutes and HTTPRoutes of one namespace attach to the same
//     Service port, the GRPCRoutes win and the HTTPRoutes are not
//     accepted there (reason Conflicted, GEP-1294).
//   - A request that no rule matches gets 404 (for gRPC, UNIMPLEMENTED).
//   - Invalid rules are dropped and the route says PartiallyInvalid
//     ("Dropped Rule ..."); a route with no valid rule is not Accepted and
//     adds nothing to a Table.
//   - An invalid backendRef keeps its weight: the share of requests it
//     would have received get 500 (for gRPC, UNAVAILABLE), and the route's
//     ResolvedRefs is False. A backend may be in any namespace, without a
//     ReferenceGrant (GEP-1294: a mesh route augments a Service its
//     clients may reach anyway; a proxy that does not know the backend,
//     as exportTo may hide it, answers 500).
//   - Regular expressions are Go's RE2 (linear time), matched against the
//     whole value, with a length cap.
//
// Precedence is the spec's; see Compile.
package route

import (
	"net/textproto"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
)

// ControllerName is the controllerName Trellis writes in route status.
const ControllerName = "trellis.io/mesh"

// Service is a Service the mesh knows: a parent routes attach to, or a
// backend they send to.
type Service struct {
	Namespace, Name string
	Ports           []Port
	// Subsets are the names of the subsets of the DestinationRule that
	// applies to the Service, which a VirtualService destination may name;
	// Rule is that rule, "namespace/name", for messages. Both empty: no
	// rule, and a destination naming a subset is invalid.
	Subsets []string
	Rule    string
}

// Port is one port of a Service.
type Port struct {
	Name string
	Port int32
}

// Routes are the routes to compile or validate, as written.
type Routes struct {
	HTTP []*catalog.HTTPRoute
	GRPC []*catalog.GRPCRoute
	// VS are Istio VirtualServices: a Service port with Gateway API
	// routes uses those, and its VirtualServices are not accepted there
	// (Conflicted).
	VS []*catalog.VirtualService
}

// Empty reports whether there are no routes.
func (rs Routes) Empty() bool { return len(rs.HTTP)+len(rs.GRPC)+len(rs.VS) == 0 }

// Config is what compiling sees besides the routes.
type Config struct {
	// Services are the Services that exist: parents and backends.
	Services []Service
	// Limits bound what one route may hold; the zero value is the
	// defaults.
	Limits Limits
}

// Limits bound a route so a Table stays small and quick to evaluate. A
// zero field takes its default, which is also the Gateway API CRD's own
// maximum: anything the API server accepts compiles. A route over a limit
// is not Accepted, with a message naming the field.
type Limits struct {
	// MaxRules per route. Default 16.
	MaxRules int
	// MaxMatches per rule. Default 64.
	MaxMatches int
	// MaxBackends per rule. Default 16.
	MaxBackends int
	// MaxHeaderMatches per match, for headers and for query parameters
	// each. Default 16.
	MaxHeaderMatches int
	// MaxHeaderChanges per header filter, for set, add and remove each.
	// Default 16.
	MaxHeaderChanges int
	// MaxRegexLength is the longest regular expression, in bytes.
	// Default 1024.
	MaxRegexLength int
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxRules, 16)
	def(&l.MaxMatches, 64)
	def(&l.MaxBackends, 16)
	def(&l.MaxHeaderMatches, 16)
	def(&l.MaxHeaderChanges, 16)
	def(&l.MaxRegexLength, 1024)
	return l
}

// Target is what a Table is for: one port of one Service, as seen by
// clients in one namespace.
type Target struct {
	Namespace, Name string
	Port            int32
	// ClientNamespace is the namespace of the clients the Table serves:
	// its consumer routes, if any, replace the producer routes. Empty:
	// producer routes only.
	ClientNamespace string
}

// Request is what a decision looks at. The proxy fills it from an HTTP/1
// or HTTP/2 request.
type Request struct {
	// GRPC is true for a gRPC call (content-type application/grpc).
	GRPC   bool
	Method string
	// Scheme is "http" or "https"; empty means "http".
	Scheme string
	// Host is the Host header or :authority, maybe with a port.
	Host string
	// Path is the request path without the query, normalised as the
	// proxy authorizes it.
	Path     string
	RawQuery string
	// Header returns a request header's values, nil for none. It is
	// called with canonical names ("X-Canary") and never for Host. A nil
	// Header is a request without headers.
	Header func(name string) []string
}

// Backend is a Service port requests are sent to: all its endpoints, or
// those of one subset of its DestinationRule.
type Backend struct {
	Namespace, Name string
	Port            int32
	// Subset, when not empty, names the subset (a VirtualService
	// destination's subset); Config's Service has it.
	Subset string
}

// Decision is the outcome for one request. It shares its slices with the
// Table: callers must not modify them.
type Decision struct {
	// Routed is false when no route is attached: the proxy balances over
	// the Service's own endpoints, as without routes. Every other field
	// is then zero.
	Routed bool
	// Route and Rule name the rule that matched; Route is zero when none
	// did (Status is then 404).
	Route catalog.Ref
	Rule  int
	// Status, when not zero, is the response the proxy sends itself: 404
	// (no rule matched), 500 (the request fell to an invalid backend or
	// the rule has none) or a redirect status with Location. Backend is
	// then zero.
	Status   int
	Location string
	// GRPCStatus, for a gRPC call answered with Status 404 or 500, is the
	// grpc-status to send instead: 12 (UNIMPLEMENTED) or 14 (UNAVAILABLE).
	GRPCStatus int
	Backend    Backend
	// RequestHeaders and ResponseHeaders are the rule's header changes
	// followed by the chosen backend's.
	RequestHeaders, ResponseHeaders HeaderOps
	// Path and Host, when not empty, replace the request's path (the
	// query is kept) and Host on the way to the backend.
	Path, Host string
	// Mirrors receive a copy of the request; their answers are dropped.
	Mirrors  []Backend
	Timeouts Timeouts
	// Retry is nil when the rule says nothing of retries.
	Retry *Retry
	// Delay, when not zero, is how long the proxy holds the request
	// before it sends it: an injected fault (a VirtualService's).
	Delay time.Duration
	// Fault is true when Status is an injected abort.
	Fault bool
}

// Resilient reports whether the decision asks for a timeout, retries or
// mirrors: what the proxy serves on a goroutine of the request's own.
func (d Decision) Resilient() bool {
	return d.Retry != nil || d.Timeouts != (Timeouts{}) || len(d.Mirrors) > 0 || d.Delay > 0
}

// NoTimeout is a timeout of "0s": the longest the proxy can wait, as the
// spec says an implementation that cannot disable a timeout must read it.
const NoTimeout = time.Duration(1<<63 - 1)

// Timeouts bound a request; zero means the rule sets none (the proxy's
// default applies).
type Timeouts struct {
	// Request covers the whole exchange, retries included.
	Request time.Duration
	// BackendRequest covers one attempt.
	BackendRequest time.Duration
}

// Retry is a rule's retry policy (GEP-1731).
type Retry struct {
	// Codes are the response statuses retried; connection failures are
	// retried too.
	Codes []int
	// Attempts is the most retries; 0: the proxy's default.
	Attempts int
	// Backoff is the least wait between attempts; 0: the proxy's default.
	Backoff time.Duration
}

// HeaderAction is what a HeaderOp does.
type HeaderAction uint8

// The actions of a header filter.
const (
	HeaderSet HeaderAction = iota + 1
	HeaderAdd
	HeaderRemove
)

// HeaderOp is one header change. Name is canonical ("X-Env").
type HeaderOp struct {
	Action      HeaderAction
	Name, Value string
}

// HeaderOps are header changes, applied in order.
type HeaderOps []HeaderOp

// Apply applies the changes to h, a map keyed by canonical names (an
// http.Header).
func (ops HeaderOps) Apply(h map[string][]string) {
	for _, op := range ops {
		switch op.Action {
		case HeaderSet:
			h[op.Name] = []string{op.Value}
		case HeaderAdd:
			h[op.Name] = append(h[op.Name], op.Value)
		case HeaderRemove:
			delete(h, op.Name)
		}
	}
}

func canonical(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }
