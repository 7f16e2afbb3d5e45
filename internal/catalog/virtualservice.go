package catalog

// KindVirtualService is Istio's VirtualService (networking.istio.io/v1).
const KindVirtualService Kind = "VirtualService"

// VirtualService is an Istio VirtualService as written, the HTTP part a
// mesh's sidecars apply: internal/route translates each of its http
// routes into a rule of the same model Gateway API routes compile to,
// kept in order. The types carry Istio's JSON field names. Fields outside
// what Trellis supports are kept, as raw values, only to be refused with
// their name.
type VirtualService struct {
	Meta
	Spec VirtualServiceSpec
}

// VirtualServiceSpec is a VirtualService's spec.
type VirtualServiceSpec struct {
	// Hosts are Services: "reviews" (in the VirtualService's namespace),
	// "reviews.shop" or "reviews.shop.svc.cluster.local".
	Hosts []string `json:"hosts"`
	// Gateways: none, or "mesh" only.
	Gateways []string      `json:"gateways,omitempty"`
	HTTP     []VSHTTPRoute `json:"http,omitempty"`

	ExportTo []string `json:"exportTo,omitempty"`
	TCP      []any    `json:"tcp,omitempty"`
	TLS      []any    `json:"tls,omitempty"`
}

// VSHTTPRoute is one http route: the first whose match the request meets
// decides it.
type VSHTTPRoute struct {
	Name string `json:"name,omitempty"`
	// Match entries are ORed; none matches every request.
	Match    []VSMatch       `json:"match,omitempty"`
	Route    []VSRouteTarget `json:"route,omitempty"`
	Redirect *VSRedirect     `json:"redirect,omitempty"`
	Rewrite  *VSRewrite      `json:"rewrite,omitempty"`
	// Timeout covers the whole request, retries included: "1s", "500ms".
	Timeout string     `json:"timeout,omitempty"`
	Retries *VSRetries `json:"retries,omitempty"`
	Fault   *VSFault   `json:"fault,omitempty"`
	Mirror  *VSTarget  `json:"mirror,omitempty"`
	// MirrorPercentage nil: every request is mirrored.
	MirrorPercentage *VSPercent `json:"mirrorPercentage,omitempty"`
	Headers          *VSHeaders `json:"headers,omitempty"`

	Mirrors        []any `json:"mirrors,omitempty"`
	MirrorPercent  any   `json:"mirrorPercent,omitempty"`
	CorsPolicy     any   `json:"corsPolicy,omitempty"`
	Delegate       any   `json:"delegate,omitempty"`
	DirectResponse any   `json:"directResponse,omitempty"`
}

// VSMatch is one match: its parts are ANDed.
type VSMatch struct {
	Name        string                   `json:"name,omitempty"`
	URI         *VSStringMatch           `json:"uri,omitempty"`
	Method      *VSStringMatch           `json:"method,omitempty"`
	Headers     map[string]VSStringMatch `json:"headers,omitempty"`
	QueryParams map[string]VSStringMatch `json:"queryParams,omitempty"`

	Scheme          any `json:"scheme,omitempty"`
	Authority       any `json:"authority,omitempty"`
	Port            any `json:"port,omitempty"`
	IgnoreURICase   any `json:"ignoreUriCase,omitempty"`
	WithoutHeaders  any `json:"withoutHeaders,omitempty"`
	SourceLabels    any `json:"sourceLabels,omitempty"`
	SourceNamespace any `json:"sourceNamespace,omitempty"`
	Gateways        any `json:"gateways,omitempty"`
	StatPrefix      any `json:"statPrefix,omitempty"`
}

// VSStringMatch is one of exact, prefix (of the string, not of path
// segments) or regex (RE2, the whole value).
type VSStringMatch struct {
	Exact  *string `json:"exact,omitempty"`
	Prefix *string `json:"prefix,omitempty"`
	Regex  *string `json:"regex,omitempty"`
}

// VSRouteTarget is a destination with its share and header changes.
type VSRouteTarget struct {
	Destination VSTarget `json:"destination"`
	// Weight nil: the whole share when it is the only destination.
	Weight  *int32     `json:"weight,omitempty"`
	Headers *VSHeaders `json:"headers,omitempty"`
}

// VSTarget is a Service port to send to.
type VSTarget struct {
	Host string `json:"host"`
	// Port nil: the Service's only port.
	Port   *VSPort `json:"port,omitempty"`
	Subset string  `json:"subset,omitempty"`
}

// VSPort is a port by number.
type VSPort struct {
	Number uint32 `json:"number"`
}

// VSRedirect answers with a redirect.
type VSRedirect struct {
	URI       string `json:"uri,omitempty"`
	Authority string `json:"authority,omitempty"`
	Scheme    string `json:"scheme,omitempty"`
	Port      uint32 `json:"port,omitempty"`
	// RedirectCode 0: 301.
	RedirectCode int `json:"redirectCode,omitempty"`

	DerivePort any `json:"derivePort,omitempty"`
}

// VSRewrite rewrites the request on its way: URI replaces the prefix a
// prefix match matched, or the whole path.
type VSRewrite struct {
	URI       string `json:"uri,omitempty"`
	Authority string `json:"authority,omitempty"`

	URIRegexRewrite any `json:"uriRegexRewrite,omitempty"`
}

// VSRetries is a retry policy.
type VSRetries struct {
	// Attempts is the most retries; 0 turns retries off.
	Attempts      *int   `json:"attempts,omitempty"`
	PerTryTimeout string `json:"perTryTimeout,omitempty"`
	// RetryOn is a comma-separated list: 5xx, gateway-error,
	// connect-failure, refused-stream, reset, retriable-4xx, or status
	// codes.
	RetryOn string `json:"retryOn,omitempty"`

	RetryRemoteLocalities any `json:"retryRemoteLocalities,omitempty"`
}

// VSFault injects delays and aborts.
type VSFault struct {
	Delay *VSDelay `json:"delay,omitempty"`
	Abort *VSAbort `json:"abort,omitempty"`
}

// VSDelay delays a share of requests by FixedDelay.
type VSDelay struct {
	FixedDelay string `json:"fixedDelay"`
	// Percentage nil: every request.
	Percentage *VSPercent `json:"percentage,omitempty"`

	Percent          any `json:"percent,omitempty"`
	ExponentialDelay any `json:"exponentialDelay,omitempty"`
}

// VSAbort answers a share of requests with an error, unsent.
type VSAbort struct {
	HTTPStatus int `json:"httpStatus,omitempty"`
	// GRPCStatus is a status name, as "UNAVAILABLE".
	GRPCStatus string `json:"grpcStatus,omitempty"`
	// Percentage nil: every request.
	Percentage *VSPercent `json:"percentage,omitempty"`

	HTTP2Error any `json:"http2Error,omitempty"`
}

// VSPercent is a percentage, 0 to 100, with fractions.
type VSPercent struct {
	Value float64 `json:"value"`
}

// VSHeaders are header changes for the request and the response.
type VSHeaders struct {
	Request  *VSHeaderOps `json:"request,omitempty"`
	Response *VSHeaderOps `json:"response,omitempty"`
}

// VSHeaderOps set, add and remove headers.
type VSHeaderOps struct {
	Set    map[string]string `json:"set,omitempty"`
	Add    map[string]string `json:"add,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}
