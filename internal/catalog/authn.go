package catalog

// KindRequestAuthentication is the Istio-shaped RequestAuthentication kind.
const KindRequestAuthentication Kind = "RequestAuthentication"

// RequestAuthentication is an Istio RequestAuthentication as written
// (security.istio.io/v1 and v1beta1, security.trellis.io/v1): which JWTs
// a workload's sidecar verifies. internal/authn verifies them.
type RequestAuthentication struct {
	Meta
	Spec RequestAuthenticationSpec
}

// RequestAuthenticationSpec is the spec. The jwtRules of every policy
// that applies to one workload are concatenated, as Istio merges them.
type RequestAuthenticationSpec struct {
	Selector   *WorkloadSelector `json:"selector,omitempty"`
	TargetRefs []PolicyTargetRef `json:"targetRefs,omitempty"`
	JWTRules   []JWTRule         `json:"jwtRules,omitempty"`
}

// JWTRule accepts the tokens of one issuer: where they are carried, the
// keys that sign them and what the proxy does with a verified one.
type JWTRule struct {
	// Issuer is the exact iss a token must carry. Required.
	Issuer string `json:"issuer"`
	// Audiences, when set, must contain one of the token's aud; empty
	// means aud is not checked.
	Audiences []string `json:"audiences,omitempty"`
	// JWKSURI is where the control plane fetches the signing keys:
	// https, or http to a loopback host. Give JWKSURI or JWKS, not both.
	JWKSURI string `json:"jwksUri,omitempty"`
	// JWKS is the key set inline, as a JSON string.
	JWKS string `json:"jwks,omitempty"`
	// FromHeaders, FromParams and FromCookies say where tokens are; with
	// none of them, the Authorization header after "Bearer " and the
	// access_token query parameter.
	FromHeaders []JWTHeader `json:"fromHeaders,omitempty"`
	FromParams  []string    `json:"fromParams,omitempty"`
	FromCookies []string    `json:"fromCookies,omitempty"`
	// ForwardOriginalToken keeps a verified token in the request passed
	// to the workload; by default it is removed.
	ForwardOriginalToken bool `json:"forwardOriginalToken,omitempty"`
	// OutputPayloadToHeader, when set, names a header that receives the
	// verified payload, base64url-encoded without padding.
	OutputPayloadToHeader string `json:"outputPayloadToHeader,omitempty"`
	// OutputClaimToHeaders copies claims into headers.
	OutputClaimToHeaders []ClaimToHeader `json:"outputClaimToHeaders,omitempty"`
}

// JWTHeader is a header carrying a token after Prefix (matched without
// regard to case, e.g. "Bearer "); an empty Prefix takes the whole value.
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
}

// ClaimToHeader copies one claim, a string, number or boolean, into
// Header. Claim names a top-level claim, or a nested one as "a.b".
type ClaimToHeader struct {
	Header string `json:"header"`
	Claim  string `json:"claim"`
}
