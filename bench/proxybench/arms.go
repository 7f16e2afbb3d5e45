package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

var allArms = append([]string{"direct", "trellis", "trellis-routed", "haproxy", "nginx"}, floorArms...)

// isTrellis: the arm runs Trellis's sidecars. trellis-routed is the
// trellis arm with a route on the backend Service that asks for retries
// and a timeout, which the client's sidecar serves on its resilient path
// (net/http's) rather than its engine: what that path costs.
func isTrellis(arm string) bool { return arm == "trellis" || arm == "trellis-routed" }

// targets are where an arm's load generators aim.
type targets struct {
	http, h2 string // URLs
	grpc     string // host:port
	balanced bool   // gRPC calls are spread over the three replicas
	floor    bool   // HTTP/1.1 only (a floor arm)
}

// proxies are an arm's client-side and server-side proxies (none for
// direct), and, for Trellis, where each one's metrics are scraped.
type proxies struct {
	client, server *proc
	metrics        bool
}

// setUp starts an arm's proxies in t and returns where to send load.
func setUp(ctx context.Context, o options, arm string, t *topo) (targets, proxies, error) {
	if err := writeCerts(t.dir); err != nil {
		return targets{}, proxies{}, err
	}
	local := "http://127.0.0.1:10080/"
	switch arm {
	case "direct":
		return targets{http: "http://" + serverIP + ":8080/", h2: "http://" + serverIP + ":8080/", grpc: serverIP + ":9001"}, proxies{}, nil
	case "trellis", "trellis-routed":
		p, err := startTrellis(ctx, o, t, arm == "trellis-routed")
		return targets{http: "http://" + vip + ":8080/", h2: "http://" + vip + ":8080/", grpc: vip + ":9000", balanced: true}, p, err
	case "haproxy":
		p, err := startPair(t, "haproxy", "-c", haproxyClient, haproxyServer, func(cfg string) []string { return []string{"haproxy", "-db", "-f", cfg} })
		if err == nil {
			err = waitReady(ctx, clientNS, local, p.client)
		}
		return targets{http: local, h2: "http://127.0.0.1:10081/", grpc: "127.0.0.1:10090", balanced: true}, p, err
	case "nginx":
		p, err := startPair(t, "nginx", "-t", nginxClient, nginxServer, func(cfg string) []string {
			return []string{"nginx", "-c", cfg, "-p", t.dir, "-e", cfg + ".err"}
		})
		if err == nil {
			err = waitReady(ctx, clientNS, local, p.client)
		}
		return targets{http: local, h2: "http://127.0.0.1:10081/", grpc: "127.0.0.1:10090", balanced: true}, p, err
	}
	if slices.Contains(floorArms, arm) {
		p, err := startFloor(ctx, t, arm)
		return targets{http: local, floor: true}, p, err
	}
	return targets{}, proxies{}, fmt.Errorf("unknown arm %q", arm)
}

// The identities: SPIFFE IDs for Trellis, DNS names for nginx's checks.
const (
	clientID = "spiffe://bench.local/ns/bench/sa/client"
	serverID = "spiffe://bench.local/ns/bench/sa/server"
)

// writeCerts writes one ECDSA P-256 CA and a client and a server
// certificate, used by every arm: name.crt, name.key, name.pem (both, for
// HAProxy) and ca.pem.
func writeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "proxybench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name string, blocks ...*pem.Block) error {
		var b []byte
		for _, bl := range blocks {
			b = append(b, pem.EncodeToMemory(bl)...)
		}
		return os.WriteFile(filepath.Join(dir, name), b, 0o600)
	}
	if err := write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caDER}); err != nil {
		return err
	}
	for i, who := range []struct{ name, id string }{{"client", clientID}, {"server", serverID}} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		id, _ := url.Parse(who.id)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: who.name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), URIs: []*url.URL{id},
			DNSNames: []string{who.name + ".bench"}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		cert, priv := &pem.Block{Type: "CERTIFICATE", Bytes: der}, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}
		if err := write(who.name+".crt", cert); err != nil {
			return err
		}
		if err := write(who.name+".key", priv); err != nil {
			return err
		}
		if err := write(who.name+".pem", cert, priv); err != nil {
			return err
		}
	}
	return nil
}

// startTrellis sets up capture in both namespaces, as injection does in a
// pod, and runs a sidecar in each: the client's knows the backend service
// (VIP 10.78.0.10, HTTP on 8080, gRPC on 9000 over three replicas), the
// server's accepts mutual TLS only.
func startTrellis(ctx context.Context, o options, t *topo, routed bool) (proxies, error) {
	eps := func(ports ...int) string {
		var s []string
		for _, p := range ports {
			s = append(s, fmt.Sprintf(`{"address": %q, "port": %d, "identity": %q, "workload": "backend", "namespace": "bench"}`, serverIP, p, serverID))
		}
		return strings.Join(s, ", ")
	}
	routes := ""
	if routed {
		// One HTTPRoute per port: each retries a 503 once (none comes)
		// within a 10 s timeout, to the port it is on.
		var rs []string
		for _, port := range []int{8080, 9000} {
			rs = append(rs, fmt.Sprintf(`{"kind": "HTTPRoute", "namespace": "bench", "name": "backend-%d", "spec": {
    "parentRefs": [{"group": "", "kind": "Service", "name": "backend", "port": %d}],
    "rules": [{"timeouts": {"request": "10s"}, "retry": {"attempts": 2, "codes": [503]},
      "backendRefs": [{"name": "backend", "port": %d}]}]}}`, port, port, port))
		}
		routes = `, "routes": [` + strings.Join(rs, ", ") + `]`
	}
	configs := map[string]string{
		"client": fmt.Sprintf(`{"version": "1", "workload": {"namespace": "bench", "name": "client", "identity": %q},
  "services": [{"namespace": "bench", "name": "backend", "vip": %q, "ports": [
    {"port": 8080, "name": "http", "endpoints": [%s]},
    {"port": 9000, "name": "grpc", "protocol": "PROTOCOL_GRPC", "endpoints": [%s]}]}]%s}`,
			clientID, vip, eps(httpPort), eps(grpcPorts...), routes),
		"server": fmt.Sprintf(`{"version": "1", "workload": {"namespace": "bench", "name": "backend", "identity": %q},
  "inbound": {"mode": "MTLS_MODE_STRICT"}}`, serverID),
	}
	var p proxies
	p.metrics = true
	for _, side := range []struct {
		name, ns string
		proc     **proc
	}{{"client", clientNS, &p.client}, {"server", serverNS, &p.server}} {
		cfg := filepath.Join(t.dir, "trellis-"+side.name+".json")
		if err := os.WriteFile(cfg, []byte(configs[side.name]), 0o600); err != nil {
			return p, err
		}
		// The proxy runs as root here, so the capture rules let it
		// through by the mark it sets rather than by its uid.
		if _, err := run(ctx, side.ns, "0,1", o.proxy, "redirect", "--proxy-mark", proxyMark); err != nil {
			return p, err
		}
		pr, err := t.start("trellis-"+side.name, side.ns, t.cpus(true), []string{"GOMAXPROCS=" + strconv.Itoa(t.workers)},
			o.proxy, "--mark", proxyMark, "--config", cfg, "--cert", filepath.Join(t.dir, side.name+".crt"), "--key", filepath.Join(t.dir, side.name+".key"),
			"--bundle", filepath.Join(t.dir, "ca.pem"), "--access-log", "off")
		if err != nil {
			return p, err
		}
		*side.proc = pr
		if err := waitReady(ctx, side.ns, "http://127.0.0.1:15021/healthz/ready", pr); err != nil {
			return p, err
		}
	}
	return p, nil
}

// startFloor runs a floor arm's two sides (proxybench floor), each with as
// many threads for Go code as the other pairs have workers.
func startFloor(ctx context.Context, t *topo, arm string) (proxies, error) {
	self, err := os.Executable()
	if err != nil {
		return proxies{}, err
	}
	var p proxies
	env := []string{"GOMAXPROCS=" + strconv.Itoa(t.workers)}
	if p.server, err = t.start(arm+"-server", serverNS, t.cpus(true), env, self, "floor", arm, "server", t.dir); err != nil {
		return p, err
	}
	if p.client, err = t.start(arm+"-client", clientNS, t.cpus(true), env, self, "floor", arm, "client", t.dir); err != nil {
		return p, err
	}
	return p, waitReady(ctx, clientNS, "http://127.0.0.1:10080/", p.client)
}

// proxyMark is the socket mark the benchmark's proxies set and their capture
// rules let through.
const proxyMark = "0x539"

// startPair writes a client and a server config from the templates, checks
// each with argv(config file) plus the check flag, and runs them.
func startPair(t *topo, name, check, clientTmpl, serverTmpl string, argv func(cfg string) []string) (proxies, error) {
	var p proxies
	for _, side := range []struct {
		side, ns, tmpl string
		proc           **proc
	}{{"server", serverNS, serverTmpl, &p.server}, {"client", clientNS, clientTmpl, &p.client}} {
		cfg := filepath.Join(t.dir, name+"-"+side.side+".conf")
		text := strings.NewReplacer("{{DIR}}", t.dir, "{{WORKERS}}", strconv.Itoa(t.workers), "{{SERVER}}", serverIP,
			"{{SIDE}}", side.side).Replace(tmplPrefix(name) + side.tmpl)
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			return p, err
		}
		if out, err := exec.Command("ip", append([]string{"netns", "exec", side.ns}, append(argv(cfg), check)...)...).CombinedOutput(); err != nil {
			return p, fmt.Errorf("%s %s %s: %v: %s", name, check, cfg, err, out)
		}
		pr, err := t.start(name+"-"+side.side, side.ns, t.cpus(true), nil, argv(cfg)...)
		if err != nil {
			return p, err
		}
		*side.proc = pr
	}
	return p, nil
}

func tmplPrefix(name string) string {
	if name == "nginx" {
		return nginxCommon
	}
	return haproxyCommon
}

// HAProxy: h2 with TLS between the pair (as Trellis's sidecars), one
// connection reused by every request (http-reuse always), no logs.
const haproxyCommon = `global
    nbthread {{WORKERS}}
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
`

const haproxyClient = `frontend http
    bind 127.0.0.1:10080
    bind 127.0.0.1:10081 proto h2
    default_backend up
frontend grpc
    bind 127.0.0.1:10090 proto h2
    default_backend grpc
backend up
    server s1 {{SERVER}}:8443 ssl crt {{DIR}}/client.pem ca-file {{DIR}}/ca.pem verify required alpn h2
backend grpc
    balance roundrobin
    server g1 {{SERVER}}:8451 ssl crt {{DIR}}/client.pem ca-file {{DIR}}/ca.pem verify required alpn h2
    server g2 {{SERVER}}:8452 ssl crt {{DIR}}/client.pem ca-file {{DIR}}/ca.pem verify required alpn h2
    server g3 {{SERVER}}:8453 ssl crt {{DIR}}/client.pem ca-file {{DIR}}/ca.pem verify required alpn h2
`

const haproxyServer = `frontend mtls
    bind {{SERVER}}:8443 ssl crt {{DIR}}/server.pem ca-file {{DIR}}/ca.pem verify required alpn h2,http/1.1
    default_backend app
backend app
    server a 127.0.0.1:8080
frontend g1
    bind {{SERVER}}:8451 ssl crt {{DIR}}/server.pem ca-file {{DIR}}/ca.pem verify required alpn h2
    default_backend g1
backend g1
    server a 127.0.0.1:9001 proto h2
frontend g2
    bind {{SERVER}}:8452 ssl crt {{DIR}}/server.pem ca-file {{DIR}}/ca.pem verify required alpn h2
    default_backend g2
backend g2
    server a 127.0.0.1:9002 proto h2
frontend g3
    bind {{SERVER}}:8453 ssl crt {{DIR}}/server.pem ca-file {{DIR}}/ca.pem verify required alpn h2
    default_backend g3
backend g3
    server a 127.0.0.1:9003 proto h2
`

// nginx: HTTP/1.1 with TLS and a keep-alive pool between the pair (nginx
// proxies HTTP to upstreams over HTTP/1.1 only), gRPC over h2 with TLS,
// no access log.
const nginxCommon = `daemon off;
master_process on;
worker_processes {{WORKERS}};
worker_rlimit_nofile 16000;
pid {{DIR}}/nginx-{{SIDE}}.pid;
error_log {{DIR}}/nginx-{{SIDE}}.error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {{DIR}}/tmp-{{SIDE}}-body;
    proxy_temp_path {{DIR}}/tmp-{{SIDE}}-proxy;
    fastcgi_temp_path {{DIR}}/tmp-{{SIDE}}-fastcgi;
    uwsgi_temp_path {{DIR}}/tmp-{{SIDE}}-uwsgi;
    scgi_temp_path {{DIR}}/tmp-{{SIDE}}-scgi;
`

const nginxClient = `    upstream up { server {{SERVER}}:8443; keepalive 64; keepalive_requests 1000000; }
    upstream grpcup { server {{SERVER}}:8451; server {{SERVER}}:8452; server {{SERVER}}:8453; keepalive 64; keepalive_requests 1000000; }
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_ssl_certificate {{DIR}}/client.crt;
    proxy_ssl_certificate_key {{DIR}}/client.key;
    proxy_ssl_trusted_certificate {{DIR}}/ca.pem;
    proxy_ssl_verify on;
    proxy_ssl_name server.bench;
    proxy_ssl_session_reuse on;
    proxy_ssl_protocols TLSv1.3;
    grpc_ssl_protocols TLSv1.3;
    grpc_ssl_certificate {{DIR}}/client.crt;
    grpc_ssl_certificate_key {{DIR}}/client.key;
    grpc_ssl_trusted_certificate {{DIR}}/ca.pem;
    grpc_ssl_verify on;
    grpc_ssl_name server.bench;
    server { listen 127.0.0.1:10080; location / { proxy_pass https://up; } }
    server { listen 127.0.0.1:10081 http2; location / { proxy_pass https://up; } }
    server { listen 127.0.0.1:10090 http2; location / { grpc_pass grpcs://grpcup; } }
}
`

const nginxServer = `    upstream app { server 127.0.0.1:8080; keepalive 64; keepalive_requests 1000000; }
    ssl_certificate {{DIR}}/server.crt;
    ssl_certificate_key {{DIR}}/server.key;
    ssl_client_certificate {{DIR}}/ca.pem;
    ssl_verify_client on;
    ssl_protocols TLSv1.3;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    server { listen {{SERVER}}:8443 ssl; location / { proxy_pass http://app; } }
    server { listen {{SERVER}}:8451 ssl http2; location / { grpc_pass grpc://127.0.0.1:9001; } }
    server { listen {{SERVER}}:8452 ssl http2; location / { grpc_pass grpc://127.0.0.1:9002; } }
    server { listen {{SERVER}}:8453 ssl http2; location / { grpc_pass grpc://127.0.0.1:9003; } }
}
`
