package proxy

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/authn"
	"github.com/trellis-mesh/trellis/internal/authz"
	"github.com/trellis-mesh/trellis/internal/meshpb"
	"github.com/trellis-mesh/trellis/internal/meshtls"
)

// deniedText is what a denied caller reads, as Envoy's RBAC filter words it.
const deniedText = "RBAC: access denied"

// setAuthorization compiles the config's AuthorizationPolicies. The config
// was validated, so they compile; if they ever did not, every request is
// denied rather than the policies dropped.
func (in *Inbound) setAuthorization(a *meshpb.Authorization) {
	if len(a.GetPolicies()) == 0 {
		in.authz.Store(nil)
		return
	}
	e, err := authz.Compile(authz.FromProto(a))
	if err != nil {
		slog.Error("authorization policies do not compile: denying every request until a config fixes them", "err", err)
		e, _ = authz.Compile([]authz.Policy{{Namespace: "-", Name: "invalid-config"}})
	}
	in.authz.Store(e)
}

// peerRequest is the part of an authorization request the connection
// gives: the mTLS peer (cs nil for plaintext), its address and ours.
func peerRequest(cs *tls.ConnectionState, remote, local net.Addr, appPort uint16) *authz.Request {
	req := &authz.Request{DestPort: int(appPort)}
	req.SourceIP, _ = addrOf(remote)
	req.DestIP, _ = addrOf(local)
	if cs != nil {
		req.SNI = cs.ServerName
		if id, err := meshtls.PeerID(*cs); err == nil {
			req.Principal = strings.TrimPrefix(id.String(), "spiffe://")
			req.Namespace, _, _ = id.Workload()
		}
	}
	req.RemoteIP = req.SourceIP // X-Forwarded-For is not trusted
	return req
}

// authorize decides req with the policies in force and counts the
// decision; nil policies allow everything, uncounted.
func (in *Inbound) authorize(req *authz.Request) authz.Decision {
	e := in.authz.Load()
	if e == nil {
		return authz.Decision{Allowed: true}
	}
	d := e.Decide(req)
	if in.Metrics == nil {
		return d
	}
	if d.Action != "" {
		in.Metrics.Authorization(d.Policy, string(d.Action), result(d.Allowed, ""))
	}
	for _, p := range d.Audited {
		in.Metrics.Authorization(p, string(authz.Audit), "audited")
	}
	if s := d.DryRun; s != nil && s.Action != "" {
		in.Metrics.Authorization(s.Policy, string(s.Action), result(s.Allowed, "dry_run_"))
	}
	return d
}

func result(allowed bool, prefix string) string {
	if allowed {
		return prefix + "allowed"
	}
	return prefix + "denied"
}

// authorizeHTTP decides an inbound request on its normalised path. A
// denied one is answered here, as Envoy's RBAC filter answers: 403 with
// its text, or for gRPC PERMISSION_DENIED with the same message; flag
// RBAC. It reports whether the request may go on.
func (in *Inbound) authorizeHTTP(w http.ResponseWriter, r *http.Request, ex *exchange, appPort uint16, auth *authz.Auth) bool {
	if in.authz.Load() == nil {
		return true
	}
	req := peerRequest(tlsState(r), remoteAddr(r), localAddr(r), appPort)
	req.HTTP = true
	req.Host, req.Method, req.Path = r.Host, r.Method, r.URL.EscapedPath()
	req.Header = func(name string) []string {
		if strings.EqualFold(name, "host") || name == ":authority" { // net/http keeps it out of the header map
			return []string{r.Host}
		}
		return r.Header.Values(name)
	}
	req.Auth = auth
	d := in.authorize(req)
	ex.authz = d
	if d.Allowed {
		return true
	}
	ex.flags, ex.reason = "RBAC", deniedBy(d)
	if protocolOf(r) == "grpc" {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "7") // PERMISSION_DENIED
		w.Header().Set("Grpc-Message", deniedText)
		w.Header().Set(flagsHeader, "RBAC")
		w.WriteHeader(http.StatusOK)
		return false
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set(flagsHeader, "RBAC")
	w.WriteHeader(http.StatusForbidden)
	_, _ = w.Write([]byte(deniedText))
	return false
}

// setAuthentication compiles the config's JWT rules; as for policies, if
// they ever did not compile, every token is refused rather than none
// checked.
func (in *Inbound) setAuthentication(a *meshpb.Authentication) {
	if len(a.GetJwtRules()) == 0 {
		in.authn.Store(nil)
		return
	}
	au, err := authn.Compile(authn.FromProto(a))
	if err != nil {
		slog.Error("JWT rules do not compile: refusing every request until a config fixes them", "err", err)
		au = brokenAuthn
	}
	in.authn.Store(au)
}

// brokenAuthn stands for JWT rules that did not compile (a config
// validation makes that impossible): every request is refused.
var brokenAuthn = &authn.Authenticator{}

// authenticate verifies the request's JWTs (RequestAuthentication). A
// request without one passes unauthenticated (nil); one with a token that
// does not verify is answered here, as Envoy's jwt_authn filter answers:
// 401 saying why (gRPC: UNAUTHENTICATED). A verified token is then taken
// out of the request unless its rule forwards it, and the rule's output
// headers are set.
func (in *Inbound) authenticate(w http.ResponseWriter, r *http.Request, ex *exchange) (*authz.Auth, bool) {
	a := in.authn.Load()
	if a == nil {
		return nil, true
	}
	if a == brokenAuthn {
		failWith(w, ex, http.StatusServiceUnavailable, "UAEX", "the workload's JWT rules do not compile")
		return nil, false
	}
	res, err := a.Authenticate(r, time.Now())
	if err != nil {
		ex.reason = "JWT refused: " + err.Error()
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		if protocolOf(r) == "grpc" {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "16") // UNAUTHENTICATED
			w.Header().Set("Grpc-Message", err.Error())
			w.WriteHeader(http.StatusOK)
			return nil, false
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(err.Error()))
		return nil, false
	}
	res.Apply(r)
	return res.Auth, true
}

// deniedBy says which policy denied, for the access log.
func deniedBy(d authz.Decision) string {
	if d.Policy != "" {
		return "denied by AuthorizationPolicy " + d.Policy
	}
	return "no ALLOW AuthorizationPolicy matched"
}

func remoteAddr(r *http.Request) net.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

func localAddr(r *http.Request) net.Addr {
	a, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return a
}
