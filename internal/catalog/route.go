package catalog

import "time"

// The Gateway API route kinds (gateway.networking.k8s.io/v1).
const (
	KindHTTPRoute Kind = "HTTPRoute"
	KindGRPCRoute Kind = "GRPCRoute"
)

// HTTPRoute is a Gateway API HTTPRoute as written: how HTTP requests to
// the Services it attaches to (its parentRefs, the GAMMA mesh binding) are
// matched, changed and sent on. internal/route compiles it. The types
// carry the upstream JSON field names so manifests and custom resources
// decode into them unchanged; a field left out means what the upstream
// default says, noted on each field.
type HTTPRoute struct {
	Meta
	Spec HTTPRouteSpec
}

// GRPCRoute is a Gateway API GRPCRoute as written: the same for gRPC
// calls, matched by service and method.
type GRPCRoute struct {
	Meta
	Spec GRPCRouteSpec
}

// HTTPRouteSpec is an HTTPRoute's spec.
type HTTPRouteSpec struct {
	ParentRefs []ParentReference `json:"parentRefs,omitempty"`
	// Hostnames are kept as written; a mesh infers nothing from them
	// (GEP-1294).
	Hostnames []string        `json:"hostnames,omitempty"`
	Rules     []HTTPRouteRule `json:"rules,omitempty"`
}

// GRPCRouteSpec is a GRPCRoute's spec.
type GRPCRouteSpec struct {
	ParentRefs []ParentReference `json:"parentRefs,omitempty"`
	Hostnames  []string          `json:"hostnames,omitempty"`
	Rules      []GRPCRouteRule   `json:"rules,omitempty"`
}

// ParentReference names what a route attaches to. In a mesh that is a
// Service: group "" (which must be written: a nil Group means
// gateway.networking.k8s.io) and kind Service.
type ParentReference struct {
	// Group nil: gateway.networking.k8s.io. "" is the core group.
	Group *string `json:"group,omitempty"`
	// Kind "": Gateway.
	Kind string `json:"kind,omitempty"`
	// Namespace "": the route's own.
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// SectionName of a Service is one of its port names; "": all ports.
	SectionName string `json:"sectionName,omitempty"`
	// Port of a Service is one of its port numbers; 0: all ports.
	Port int32 `json:"port,omitempty"`
}

// BackendObjectReference names a backend.
type BackendObjectReference struct {
	// Group "": the core group.
	Group string `json:"group,omitempty"`
	// Kind "": Service.
	Kind string `json:"kind,omitempty"`
	Name string `json:"name"`
	// Namespace "": the route's own.
	Namespace string `json:"namespace,omitempty"`
	// Port is the Service port; required for a Service.
	Port int32 `json:"port,omitempty"`
	// Subset is a VirtualService destination's subset (the Gateway API
	// has none), kept when internal/route translates the destination into
	// a backendRef; never written or read as JSON.
	Subset string `json:"-"`
}

// BackendRef is a backend with its share of the traffic.
type BackendRef struct {
	BackendObjectReference `json:",inline"`
	// Weight nil: 1. 0 sends the backend nothing.
	Weight *int32 `json:"weight,omitempty"`
}

// HTTPRouteRule matches requests and says what happens to them.
type HTTPRouteRule struct {
	Name string `json:"name,omitempty"`
	// Matches are ORed; none is a PathPrefix match on "/".
	Matches     []HTTPRouteMatch   `json:"matches,omitempty"`
	Filters     []HTTPRouteFilter  `json:"filters,omitempty"`
	BackendRefs []HTTPBackendRef   `json:"backendRefs,omitempty"`
	Timeouts    *HTTPRouteTimeouts `json:"timeouts,omitempty"`
	Retry       *HTTPRouteRetry    `json:"retry,omitempty"`
	// SessionPersistence is kept only to be refused.
	SessionPersistence map[string]any `json:"sessionPersistence,omitempty"`
}

// HTTPRouteMatch is one match: its parts are ANDed.
type HTTPRouteMatch struct {
	// Path nil: PathPrefix "/".
	Path        *HTTPPathMatch        `json:"path,omitempty"`
	Headers     []HTTPHeaderMatch     `json:"headers,omitempty"`
	QueryParams []HTTPQueryParamMatch `json:"queryParams,omitempty"`
	// Method "": any.
	Method string `json:"method,omitempty"`
}

// Match types, as the Gateway API spells them. PathPrefix is for paths
// only.
const (
	MatchExact             = "Exact"
	MatchPathPrefix        = "PathPrefix"
	MatchRegularExpression = "RegularExpression"
)

// HTTPPathMatch matches the request path.
type HTTPPathMatch struct {
	// Type "": PathPrefix.
	Type string `json:"type,omitempty"`
	// Value "": "/".
	Value string `json:"value,omitempty"`
}

// HTTPHeaderMatch matches one request header, by name without regard to
// case. GRPCRoute uses it too.
type HTTPHeaderMatch struct {
	// Type "": Exact.
	Type  string `json:"type,omitempty"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// HTTPQueryParamMatch matches one query parameter, by exact name.
type HTTPQueryParamMatch struct {
	// Type "": Exact.
	Type  string `json:"type,omitempty"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Filter types, as the Gateway API spells them.
const (
	FilterRequestHeaderModifier  = "RequestHeaderModifier"
	FilterResponseHeaderModifier = "ResponseHeaderModifier"
	FilterRequestMirror          = "RequestMirror"
	FilterRequestRedirect        = "RequestRedirect"
	FilterURLRewrite             = "URLRewrite"
	FilterExtensionRef           = "ExtensionRef"
	FilterCORS                   = "CORS"
	FilterExternalAuth           = "ExternalAuth"
)

// HTTPRouteFilter is one filter: Type names the field that is set.
type HTTPRouteFilter struct {
	Type                   string                     `json:"type"`
	RequestHeaderModifier  *HTTPHeaderFilter          `json:"requestHeaderModifier,omitempty"`
	ResponseHeaderModifier *HTTPHeaderFilter          `json:"responseHeaderModifier,omitempty"`
	RequestMirror          *HTTPRequestMirrorFilter   `json:"requestMirror,omitempty"`
	RequestRedirect        *HTTPRequestRedirectFilter `json:"requestRedirect,omitempty"`
	URLRewrite             *HTTPURLRewriteFilter      `json:"urlRewrite,omitempty"`
	// ExtensionRef, CORS and ExternalAuth are kept only to be refused.
	ExtensionRef *LocalObjectReference `json:"extensionRef,omitempty"`
	CORS         map[string]any        `json:"cors,omitempty"`
	ExternalAuth map[string]any        `json:"externalAuth,omitempty"`
}

// LocalObjectReference names an object in the route's namespace.
type LocalObjectReference struct {
	Group string `json:"group"`
	Kind  string `json:"kind"`
	Name  string `json:"name"`
}

// HTTPHeaderFilter changes headers: at most one action per header name.
type HTTPHeaderFilter struct {
	Set    []HTTPHeader `json:"set,omitempty"`
	Add    []HTTPHeader `json:"add,omitempty"`
	Remove []string     `json:"remove,omitempty"`
}

// HTTPHeader is a header name and value.
type HTTPHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Path modifier types.
const (
	ReplaceFullPath    = "ReplaceFullPath"
	ReplacePrefixMatch = "ReplacePrefixMatch"
)

// HTTPPathModifier replaces the whole path or the prefix a PathPrefix
// match matched. The pointers tell "" (meaningful for a prefix) from
// unset.
type HTTPPathModifier struct {
	Type               string  `json:"type"`
	ReplaceFullPath    *string `json:"replaceFullPath,omitempty"`
	ReplacePrefixMatch *string `json:"replacePrefixMatch,omitempty"`
}

// HTTPRequestRedirectFilter answers with a redirect.
type HTTPRequestRedirectFilter struct {
	// Scheme "": the request's. "http" or "https".
	Scheme string `json:"scheme,omitempty"`
	// Hostname "": the request's Host without its port.
	Hostname string            `json:"hostname,omitempty"`
	Path     *HTTPPathModifier `json:"path,omitempty"`
	// Port 0: derived from the scheme, or the Service port.
	Port int32 `json:"port,omitempty"`
	// StatusCode 0: 302.
	StatusCode int `json:"statusCode,omitempty"`
}

// HTTPURLRewriteFilter rewrites the request on its way to the backend.
type HTTPURLRewriteFilter struct {
	Hostname string            `json:"hostname,omitempty"`
	Path     *HTTPPathModifier `json:"path,omitempty"`
}

// HTTPRequestMirrorFilter copies requests to another backend, whose
// answers are dropped. Percent and Fraction both nil: every request.
type HTTPRequestMirrorFilter struct {
	BackendRef BackendObjectReference `json:"backendRef"`
	Percent    *int32                 `json:"percent,omitempty"`
	Fraction   *Fraction              `json:"fraction,omitempty"`
}

// Fraction is Numerator/Denominator; Denominator nil: 100.
type Fraction struct {
	Numerator   int32  `json:"numerator"`
	Denominator *int32 `json:"denominator,omitempty"`
}

// HTTPBackendRef is a backend with filters applied only to the requests
// sent to it.
type HTTPBackendRef struct {
	BackendRef `json:",inline"`
	Filters    []HTTPRouteFilter `json:"filters,omitempty"`
}

// Duration is a Gateway API duration (GEP-2257): one to four groups of up
// to five digits and a unit of h, m, s or ms, as "1h30m" or "500ms".
type Duration string

// HTTPRouteTimeouts bound a request. Unset: the proxy's default. "0s":
// no timeout.
type HTTPRouteTimeouts struct {
	// Request covers the whole exchange, retries included.
	Request Duration `json:"request,omitempty"`
	// BackendRequest covers one attempt; no longer than Request.
	BackendRequest Duration `json:"backendRequest,omitempty"`
}

// HTTPRouteRetry says when a failed request is tried again (GEP-1731).
type HTTPRouteRetry struct {
	// Codes are the response statuses (400-599) retried.
	Codes []int `json:"codes,omitempty"`
	// Attempts is the most retries; nil: the proxy's default.
	Attempts *int `json:"attempts,omitempty"`
	// Backoff is the least wait between attempts; "": the proxy's default.
	Backoff Duration `json:"backoff,omitempty"`
}

// GRPCRouteRule matches gRPC calls and says what happens to them.
type GRPCRouteRule struct {
	Name string `json:"name,omitempty"`
	// Matches are ORed; none matches every call.
	Matches     []GRPCRouteMatch  `json:"matches,omitempty"`
	Filters     []GRPCRouteFilter `json:"filters,omitempty"`
	BackendRefs []GRPCBackendRef  `json:"backendRefs,omitempty"`
	// SessionPersistence is kept only to be refused.
	SessionPersistence map[string]any `json:"sessionPersistence,omitempty"`
}

// GRPCRouteMatch is one match: its parts are ANDed.
type GRPCRouteMatch struct {
	// Method nil: any service and method.
	Method  *GRPCMethodMatch  `json:"method,omitempty"`
	Headers []HTTPHeaderMatch `json:"headers,omitempty"`
}

// GRPCMethodMatch matches the called service and method; "" matches any.
// At least one of them is set.
type GRPCMethodMatch struct {
	// Type "": Exact.
	Type    string `json:"type,omitempty"`
	Service string `json:"service,omitempty"`
	Method  string `json:"method,omitempty"`
}

// GRPCRouteFilter is one filter of a GRPCRoute: headers, mirrors, or an
// extension (refused).
type GRPCRouteFilter struct {
	Type                   string                   `json:"type"`
	RequestHeaderModifier  *HTTPHeaderFilter        `json:"requestHeaderModifier,omitempty"`
	ResponseHeaderModifier *HTTPHeaderFilter        `json:"responseHeaderModifier,omitempty"`
	RequestMirror          *HTTPRequestMirrorFilter `json:"requestMirror,omitempty"`
	ExtensionRef           *LocalObjectReference    `json:"extensionRef,omitempty"`
}

// GRPCBackendRef is a backend with its own filters.
type GRPCBackendRef struct {
	BackendRef `json:",inline"`
	Filters    []GRPCRouteFilter `json:"filters,omitempty"`
}

// RouteStatus is a route's status as the Gateway API writes it: one entry
// per parent a controller is responsible for.
type RouteStatus struct {
	Parents []RouteParentStatus `json:"parents"`
}

// RouteParentStatus is a route's status with respect to one parentRef.
type RouteParentStatus struct {
	ParentRef ParentReference `json:"parentRef"`
	// ControllerName is DOMAIN/PATH naming who wrote the entry.
	ControllerName string      `json:"controllerName"`
	Conditions     []Condition `json:"conditions"`
}

// ConditionStatus is True, False or Unknown.
type ConditionStatus string

// Condition statuses.
const (
	ConditionTrue    ConditionStatus = "True"
	ConditionFalse   ConditionStatus = "False"
	ConditionUnknown ConditionStatus = "Unknown"
)

// Condition is a Kubernetes status condition (metav1.Condition's shape).
type Condition struct {
	Type               string          `json:"type"`
	Status             ConditionStatus `json:"status"`
	ObservedGeneration int64           `json:"observedGeneration,omitempty"`
	// LastTransitionTime is set by whoever writes the status.
	LastTransitionTime time.Time `json:"lastTransitionTime,omitzero"`
	Reason             string    `json:"reason"`
	Message            string    `json:"message"`
}
