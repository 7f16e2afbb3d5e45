package authn

import "github.com/trellis-mesh/trellis/internal/meshpb"

// ToProto is the config's form of a workload's rules, with the key sets
// fetched for their jwksUris (keys, by URI).
func ToProto(rules []JWTRule, keys map[string][]byte) *meshpb.Authentication {
	out := &meshpb.Authentication{}
	for _, r := range rules {
		pr := &meshpb.JwtRule{
			Issuer: r.Issuer, Audiences: r.Audiences, JwksUri: r.JWKSURI, Jwks: r.JWKS,
			FromParams: r.FromParams, FromCookies: r.FromCookies, ForwardOriginalToken: r.ForwardOriginalToken,
			OutputPayloadToHeader: r.OutputPayloadToHeader,
		}
		if r.JWKSURI != "" {
			pr.Keys = string(keys[r.JWKSURI])
		}
		for _, h := range r.FromHeaders {
			pr.FromHeaders = append(pr.FromHeaders, &meshpb.JwtHeader{Name: h.Name, Prefix: h.Prefix})
		}
		for _, c := range r.OutputClaimToHeaders {
			pr.OutputClaimToHeaders = append(pr.OutputClaimToHeaders, &meshpb.ClaimToHeader{Header: c.Header, Claim: c.Claim})
		}
		out.JwtRules = append(out.JwtRules, pr)
	}
	return out
}

// FromProto reads the rules a config carries and the keys fetched for
// them, for Compile.
func FromProto(a *meshpb.Authentication) (rules []JWTRule, keys func(jwksURI string) []byte) {
	fetched := map[string][]byte{}
	for _, pr := range a.GetJwtRules() {
		r := JWTRule{
			Issuer: pr.GetIssuer(), Audiences: pr.GetAudiences(), JWKSURI: pr.GetJwksUri(), JWKS: pr.GetJwks(),
			FromParams: pr.GetFromParams(), FromCookies: pr.GetFromCookies(), ForwardOriginalToken: pr.GetForwardOriginalToken(),
			OutputPayloadToHeader: pr.GetOutputPayloadToHeader(),
		}
		if pr.GetJwksUri() != "" && pr.GetKeys() != "" {
			fetched[pr.GetJwksUri()] = []byte(pr.GetKeys())
		}
		for _, h := range pr.GetFromHeaders() {
			r.FromHeaders = append(r.FromHeaders, JWTHeader{Name: h.GetName(), Prefix: h.GetPrefix()})
		}
		for _, c := range pr.GetOutputClaimToHeaders() {
			r.OutputClaimToHeaders = append(r.OutputClaimToHeaders, ClaimToHeader{Header: c.GetHeader(), Claim: c.GetClaim()})
		}
		rules = append(rules, r)
	}
	return rules, func(uri string) []byte { return fetched[uri] }
}
