package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// serverConfig is what the echo server serves. Its zero value serves
// nothing.
type serverConfig struct {
	// Ports, each served on every address (or ListenHost); 0 picks a
	// free one.
	HTTP  []int // HTTP/1.1 and HTTP/2 without TLS (h2c)
	HTTPS []int // HTTP/1.1 and HTTP/2 over TLS
	GRPC  []int // gRPC without TLS
	TCP   []int // echoes what it reads
	// ListenHost is the address to listen on; "" means all of them.
	ListenHost string
	// CertFile and KeyFile are the HTTPS certificate and key (PEM); when
	// either file is missing or unnamed, a self-signed one is made.
	CertFile, KeyFile string
	// Version, Cluster and Hostname are reported as ServiceVersion,
	// Cluster (when set) and Hostname (when set).
	Version, Cluster, Hostname string
}

// echoMethod is the one gRPC method the server has: it takes any bytes
// and answers the lines describing the call. Both ends are this binary,
// so the messages are raw bytes (rawCodec) rather than protobuf.
const echoMethod = "/gammaecho.Echo/Echo"

// runServer serves cfg until ctx is done, then stops every listener.
func runServer(ctx context.Context, cfg serverConfig) error {
	s, err := listen(cfg)
	if err != nil {
		return err
	}
	return s.run(ctx)
}

// server is an echo server with its ports bound.
type server struct {
	cfg                    serverConfig
	cert                   tls.Certificate
	http, https, grpc, tcp []net.Listener
}

// listen binds every port of cfg (and loads or makes the certificate when
// it has HTTPS ports); run serves and then closes them.
func listen(cfg serverConfig) (*server, error) {
	s := &server{cfg: cfg}
	if len(cfg.HTTPS) > 0 {
		var err error
		if s.cert, err = certificate(cfg.CertFile, cfg.KeyFile); err != nil {
			return nil, err
		}
	}
	for _, group := range []struct {
		ports []int
		into  *[]net.Listener
	}{{cfg.HTTP, &s.http}, {cfg.HTTPS, &s.https}, {cfg.GRPC, &s.grpc}, {cfg.TCP, &s.tcp}} {
		for _, p := range group.ports {
			l, err := net.Listen("tcp", net.JoinHostPort(cfg.ListenHost, strconv.Itoa(p)))
			if err != nil {
				for _, l := range slices.Concat(s.http, s.https, s.grpc, s.tcp) {
					l.Close()
				}
				return nil, fmt.Errorf("listen on port %d: %w", p, err)
			}
			*group.into = append(*group.into, l)
		}
	}
	return s, nil
}

// run serves every listener until ctx is done or one fails, then stops
// them all (letting requests in flight finish) and returns.
func (s *server) run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, l := range s.http {
		s.serveHTTP(ctx, g, l, nil)
	}
	for _, l := range s.https {
		s.serveHTTP(ctx, g, l, &tls.Config{Certificates: []tls.Certificate{s.cert}})
	}
	for _, l := range s.grpc {
		gs := s.grpcServer(portOf(l))
		g.Go(func() error { return gs.Serve(l) }) // nil once stopped
		g.Go(func() error {
			<-ctx.Done()
			gs.GracefulStop()
			return nil
		})
	}
	for _, l := range s.tcp {
		g.Go(func() error { return serveTCP(ctx, l) })
	}
	return g.Wait()
}

// serveHTTP serves echoHandler on l in g (HTTP/1.1 and HTTP/2, over TLS
// when tlsConfig is set) until ctx is done, then shuts the server down.
func (s *server) serveHTTP(ctx context.Context, g *errgroup.Group, l net.Listener, tlsConfig *tls.Config) {
	srv := &http.Server{Handler: echoHandler{cfg: &s.cfg, port: portOf(l)}, TLSConfig: tlsConfig,
		ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10,
		Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	g.Go(func() error {
		var err error
		if tlsConfig != nil {
			err = srv.ServeTLS(l, "", "")
		} else {
			err = srv.Serve(l)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve http on %s: %w", l.Addr(), err)
	})
	g.Go(func() error {
		<-ctx.Done()
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(stopCtx)
	})
}

// echoHandler answers every request 200 with the lines the echo app
// writes for it, in the echo app's order.
type echoHandler struct {
	cfg  *serverConfig
	port int
}

func (h echoHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	writeField(&b, "ServiceVersion", h.cfg.Version)
	writeField(&b, "ServicePort", strconv.Itoa(h.port))
	writeField(&b, "Host", r.Host)
	writeField(&b, "URL", r.RequestURI) // as the client sent it, not cleaned
	if h.cfg.Cluster != "" {
		writeField(&b, "Cluster", h.cfg.Cluster)
	}
	writeField(&b, "Method", r.Method)
	writeField(&b, "Proto", r.Proto)
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	writeField(&b, "IP", ip)
	if r.TLS != nil && r.TLS.NegotiatedProtocol != "" {
		writeField(&b, "Alpn", r.TLS.NegotiatedProtocol)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Header)) {
		for _, v := range r.Header[k] {
			writeField(&b, "RequestHeader", k+":"+v)
		}
	}
	if h.cfg.Hostname != "" {
		writeField(&b, "Hostname", h.cfg.Hostname)
	}
	w.Header().Set("Content-Type", "application/text") // the echo app's
	_, _ = io.WriteString(w, b.String())
}

// grpcServer is a gRPC server with echoMethod, reporting port as its
// ServicePort.
func (s *server) grpcServer(port int) *grpc.Server {
	gs := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.MaxConcurrentStreams(100), grpc.ConnectionTimeout(5*time.Second),
		grpc.MaxRecvMsgSize(64<<10))
	gs.RegisterService(&grpc.ServiceDesc{ServiceName: "gammaecho.Echo", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Echo",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var msg []byte
				if err := dec(&msg); err != nil {
					return nil, err
				}
				out := []byte(grpcReply(ctx, &s.cfg, port, string(msg)))
				return &out, nil
			}}}}, struct{}{})
	return gs
}

// grpcReply is the text the echo app answers a gRPC call with: the
// request metadata (Host from :authority; binary values left out), then
// StatusCode=200 and Proto=GRPC among the server's fields.
func grpcReply(ctx context.Context, cfg *serverConfig, port int, msg string) string {
	var b strings.Builder
	md, _ := metadata.FromIncomingContext(ctx)
	for _, k := range slices.Sorted(maps.Keys(md)) {
		if strings.HasSuffix(k, "-bin") {
			continue
		}
		for _, v := range md[k] {
			if k == ":authority" {
				writeField(&b, "Host", v)
			}
			writeField(&b, "RequestHeader", k+":"+v)
		}
	}
	ip := "0.0.0.0"
	if p, ok := peer.FromContext(ctx); ok {
		ip, _, _ = net.SplitHostPort(p.Addr.String())
	}
	writeField(&b, "StatusCode", "200")
	writeField(&b, "ServiceVersion", cfg.Version)
	writeField(&b, "ServicePort", strconv.Itoa(port))
	if cfg.Cluster != "" {
		writeField(&b, "Cluster", cfg.Cluster)
	}
	writeField(&b, "IP", ip)
	writeField(&b, "Proto", "GRPC")
	writeField(&b, "Echo", msg)
	if cfg.Hostname != "" {
		writeField(&b, "Hostname", cfg.Hostname)
	}
	return b.String()
}

// serveTCP echoes back what each connection to l sends, until ctx is
// done; it then closes l and every connection and returns once their
// goroutines have.
func serveTCP(ctx context.Context, l net.Listener) error {
	defer context.AfterFunc(ctx, func() { l.Close() })()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("serve tcp on %s: %w", l.Addr(), err)
		}
		conns.Go(func() {
			defer c.Close()
			defer context.AfterFunc(ctx, func() { c.Close() })()
			_, _ = io.Copy(c, c)
		})
	}
}

func writeField(b *strings.Builder, key, value string) {
	fmt.Fprintf(b, "%s=%s\n", key, value)
}

func portOf(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// certificate loads the certificate and key files, or makes a self-signed
// certificate for localhost when either is missing, so that the image
// needs no files.
func certificate(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err == nil {
		return cert, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return tls.Certificate{}, fmt.Errorf("https certificate %s and key %s: %w", certFile, keyFile, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "gammaecho"},
		DNSNames:    []string{"localhost"},
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    time.Now().AddDate(1, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// rawCodec carries []byte messages as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" } // content-type application/grpc+proto
